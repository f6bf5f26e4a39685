//! Path normalisation: never panics, idempotent, and its output has no dot
//! segments, no `//`, and starts with `/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_core::normalize::normalize_path;

fuzz_target!(|raw: &str| {
    if let Ok(once) = normalize_path(raw) {
        assert!(once.starts_with('/'), "{raw:?} -> {once:?}");
        let twice = normalize_path(&once).expect("a normalised path normalises");
        assert_eq!(once, twice, "not idempotent for {raw:?}");
        for seg in once.split('/').skip(1) {
            assert!(seg != "." && seg != "..", "dot segment left in {once:?} from {raw:?}");
        }
        assert!(!once.contains("//"), "empty segment left in {once:?} from {raw:?}");
    }
});
