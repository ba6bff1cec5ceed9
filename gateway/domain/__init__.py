"""The pure core: business rules as functions of data and time. No I/O happens here."""
