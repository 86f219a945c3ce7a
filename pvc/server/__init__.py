"""`pvc serve`: the library's operations as HTTP routes (Bottle on cheroot)."""
