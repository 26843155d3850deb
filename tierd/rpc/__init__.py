"""What the daemon and its clients share: msgpack frames (`frames`) and the wire schema of
requests and replies (`schema`)."""
