"""The data layer: record types, readers with validation, prompt formatting and tokenisation,
and the built-in synthetic benchmark. It never trains or evaluates."""
