//! Patrol files: the TOML format, validation with file:line:col errors, templating.
