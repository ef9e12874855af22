"""The Faust worker: app and tables, the processor, the customer store, metrics, dead letters."""
