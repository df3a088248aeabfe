"""Using a trained model: classify, generate, fill masks (over texts or files), and serve it over HTTP."""
