"""Tables, migrations and the few queries the services need."""
