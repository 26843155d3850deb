"""Engine plugins for tierd; each subpackage imports on its own."""
