"""Pure actor logic: no actors, no sockets, no files, no clock."""
