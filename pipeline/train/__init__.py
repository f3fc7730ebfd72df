"""Training pieces: losses, the AII curriculum and mixture plans, faiss clustering."""
