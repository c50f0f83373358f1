"""The C side of tests/test_interop_c.py: sources and their build helper."""
