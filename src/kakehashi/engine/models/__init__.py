"""Model families (one readable file each), their registry and the weight loader."""
