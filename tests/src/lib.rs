//! Support for the cross-program tests: starts real servers and tears them down on drop.
#![forbid(unsafe_code)]
