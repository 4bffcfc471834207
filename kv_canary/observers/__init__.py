"""Host-side observers of the device state: each reads device values one step late, never blocking."""
