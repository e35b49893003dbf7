"""C++ sources of ``medtune._C``, shipped as package data and compiled on first use."""
