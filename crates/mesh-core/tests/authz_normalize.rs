//! Path normalisation over arbitrary input: it never panics, its output is
//! in normal form, and normalising twice changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use mesh_core::normalize::normalize_path;
use proptest::prelude::*;

fn path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_owned()),
        Just("//".to_owned()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("\\".to_owned()),
        Just(";".to_owned()),
        Just("?".to_owned()),
        Just("%".to_owned()),
        "%[0-9a-fA-FzZ]{2}",
        "[a-zA-Z0-9._~-]{1,4}",
        any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..16).prop_map(|v| format!("/{}", v.concat()))
}

proptest! {
    #[test]
    fn normal_form_and_idempotent(raw in path()) {
        if let Ok(n) = normalize_path(&raw) {
            prop_assert!(n.starts_with('/'));
            prop_assert!(!n.contains("//"), "{n}");
            prop_assert!(!n.contains('\\'), "{n}");
            prop_assert!(!n.contains('?'), "{n}");
            for seg in n.split('/') {
                prop_assert!(seg != "." && seg != "..", "{n}");
            }
            let again = normalize_path(&n).unwrap();
            prop_assert_eq!(&again, &n);
            // Only escapes of reserved characters remain, in upper case.
            for (i, _) in n.match_indices('%') {
                let hex = &n[i + 1..i + 3];
                let v = u8::from_str_radix(hex, 16).unwrap();
                prop_assert_eq!(hex, hex.to_ascii_uppercase());
                prop_assert!(!(v.is_ascii_alphanumeric() || b"-._~/\\\0".contains(&v)), "{n}");
            }
        }
    }
}
