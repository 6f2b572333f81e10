"""Built-in cluster profiles (YAML files beside this module)."""
