//! Cross-crate integration tests live in `tests/`. This crate also compiles
//! the README's Rust examples as doctests, so the front door stays true.

#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
