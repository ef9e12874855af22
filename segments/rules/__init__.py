"""The segment rule language: parsing, validation and compiled evaluation."""
