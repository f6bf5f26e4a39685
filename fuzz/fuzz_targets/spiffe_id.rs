//! The SPIFFE ID parser: never panics, and what it accepts prints back to
//! an ID that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_core::identity::SpiffeId;

fuzz_target!(|text: &str| {
    if let Ok(id) = SpiffeId::parse(text) {
        let printed = id.to_string();
        let again = SpiffeId::parse(&printed).expect("a printed SPIFFE ID parses");
        assert_eq!(id, again);
    }
});
