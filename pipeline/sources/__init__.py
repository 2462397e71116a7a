"""One reader module per source kind; each turns a file into schema tables."""
