"""The configuration: the TOML file in, frozen dataclasses out, with the units, paths and typed
option reading that relay plugins use too."""
