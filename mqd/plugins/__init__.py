"""The plugin system: the hook specifications, the plugin host that loads core and third-party
plugins, and the webhook contract relay plugins implement."""
