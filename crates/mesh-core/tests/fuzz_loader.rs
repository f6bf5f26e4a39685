//! The loader takes arbitrary bytes and arbitrary YAML without panicking:
//! everything is either loaded or rejected with errors naming the file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use proptest::prelude::*;

const EXAMPLE: &str = include_str!("../../../examples/wordpress-canary/mesh/services.yaml");
const LISTINGS: &str =
    include_str!("../../../examples/wordpress-canary/mesh/article-listings.yaml");

fn load(text: &str) {
    match mesh_core::load::load_str(Path::new("fuzz.yaml"), text) {
        Ok(resources) => {
            // Whatever loads must also compile or be rejected cleanly, and
            // the analyzers must run on it.
            if let Ok(snap) = mesh_core::snapshot::compile(&resources) {
                let _ = mesh_core::analyze::check(&snap, &resources);
            }
        }
        Err(e) => {
            assert!(!e.0.is_empty());
            for err in &e.0 {
                assert_eq!(err.file, Path::new("fuzz.yaml"));
            }
        }
    }
}

/// YAML-looking text built from the tokens Istio files are made of.
fn yamlish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("apiVersion: networking.istio.io/v1\n".to_owned()),
        Just("apiVersion: security.istio.io/v1\n".to_owned()),
        Just("kind: VirtualService\n".to_owned()),
        Just("kind: DestinationRule\n".to_owned()),
        Just("kind: AuthorizationPolicy\n".to_owned()),
        Just("kind: PeerAuthentication\n".to_owned()),
        Just("kind: ServiceEntry\n".to_owned()),
        Just("metadata: {name: a}\n".to_owned()),
        Just("spec:\n".to_owned()),
        Just("  hosts: [a, '*']\n".to_owned()),
        Just("  host: a\n".to_owned()),
        Just(
            "  http:\n  - route:\n    - destination: {host: a, subset: v1}\n      weight: 90\n"
                .to_owned()
        ),
        Just("  rules: [{from: [{source: {principals: ['*']}}]}]\n".to_owned()),
        Just("  mtls: {mode: STRICT}\n".to_owned()),
        Just("  ports: [{number: 80, name: http}]\n".to_owned()),
        Just("---\n".to_owned()),
        Just("apiVersion: v1\nkind: List\nitems:\n- ".to_owned()),
        Just("kind: AuthorizationPolicyList\nitems:\n- ".to_owned()),
        Just("&a [*a, *a]\n".to_owned()),
        Just("!!binary aGk=\n".to_owned()),
        Just("? [complex]\n: key\n".to_owned()),
        "[ -~\n\t]{0,40}",
    ];
    prop::collection::vec(token, 0..24).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        load(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn arbitrary_yaml(text in yamlish()) {
        load(&text);
    }

    #[test]
    fn mutated_real_config(
        which in any::<bool>(),
        cuts in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut bytes = if which { EXAMPLE } else { LISTINGS }.as_bytes().to_vec();
        for (at, byte) in cuts {
            let i = at.index(bytes.len());
            match byte % 3 {
                0 => bytes[i] = byte,
                1 => { bytes.remove(i); }
                _ => bytes.truncate(i),
            }
            if bytes.is_empty() { break; }
        }
        load(&String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn deep_nesting_and_alias_bombs_are_refused_not_fatal() {
    load(&"[".repeat(100_000));
    load(&format!(
        "a: {}1{}\n",
        "{b: ".repeat(5_000),
        "}".repeat(5_000)
    ));
    let bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n\
                c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n\
                e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n\
                g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n";
    load(bomb);
}
