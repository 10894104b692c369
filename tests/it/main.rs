//! One integration binary: every test starts real `replgate` processes on loopback.

mod harness;

mod auth;
mod bad_input;
mod front;
mod lifecycle;
mod ops;
mod pairing;
mod target;
