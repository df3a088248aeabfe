"""Data: sources (read + validate), prepare (tokenize, cached), collate (pad, batch)."""
