"""Model parts (embedders, transformer, heads) and the assemblies that wire them. No losses, no Lightning."""
