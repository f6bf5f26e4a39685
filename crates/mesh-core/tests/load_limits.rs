//! The loader reads the files a large mesh really has (`helm template` or
//! `istioctl` output: one file of thousands of documents) and still refuses
//! hostile input by name: too deep, an alias bomb, a separator storm, too
//! large. A refused file never takes the process down.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use mesh_core::load::{MAX_DOCUMENTS, MAX_FILE_BYTES, load_path, load_str};

fn workload_entries(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n\
                 metadata: {{name: w-{i}, namespace: big}}\n\
                 spec: {{address: 10.{}.{}.{}, labels: {{app: a-{}}}, serviceAccount: a}}\n---\n",
                i / 65536 % 256,
                i / 256 % 256,
                i % 256,
                i % 100,
            )
        })
        .collect()
}

/// The one error of a refused text, which names the file.
fn refused(text: &str) -> String {
    let errs = load_str(Path::new("hostile.yaml"), text).expect_err("must be refused");
    assert_eq!(errs.0.len(), 1, "{errs}");
    assert_eq!(errs.0[0].file, Path::new("hostile.yaml"));
    errs.to_string()
}

#[test]
fn a_file_of_many_thousand_documents_is_read_whole() {
    // 1,024 was the parser's default limit; a large mesh's one file has more.
    let r = load_str(Path::new("helm.yaml"), &workload_entries(30_000)).unwrap();
    assert_eq!(r.workload_entries.len(), 30_000);
    assert_eq!(
        r.workload_entries[29_999].meta.name.as_deref(),
        Some("w-29999")
    );
    // And from disk, as a proxy reads it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), workload_entries(5_000)).unwrap();
    assert_eq!(load_path(dir.path()).unwrap().workload_entries.len(), 5_000);
}

#[test]
fn a_separator_storm_is_refused_by_its_document_count() {
    let msg = refused(&"---\n".repeat(MAX_DOCUMENTS + 10));
    assert!(msg.contains("Documents"), "{msg}");
}

#[test]
fn nesting_deeper_than_the_parser_allows_is_refused() {
    for (open, close) in [("[", "]"), ("{a: ", "}")] {
        let text = format!("a: {}1{}\n", open.repeat(200), close.repeat(200));
        let msg = refused(&text);
        assert!(msg.contains("not valid YAML"), "{msg}");
    }
    // Block style, one level per line.
    let block: String = (0..200)
        .map(|d| format!("{}k{d}:\n", "  ".repeat(d)))
        .collect();
    assert!(refused(&block).contains("not valid YAML"));
    // What real files nest (a VirtualService is ~10 deep) is read.
    let ok = format!("a: {}1{}\n", "[".repeat(40), "]".repeat(40));
    let _ = load_str(Path::new("ok.yaml"), &ok).expect_err("no envelope, but parsed");
}

#[test]
fn alias_bombs_are_refused() {
    // Nine to the eighth power nodes from a few hundred bytes.
    let mut text = "a0: &a0 [x, x, x, x, x, x, x, x, x]\n".to_owned();
    for i in 1..8 {
        let p = i - 1;
        text.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    assert!(refused(&text).contains("not valid YAML"));
    // Many aliases of one anchor.
    let many = format!("a: &a x\nb: [{}]\n", vec!["*a"; 60_000].join(", "));
    assert!(refused(&many).contains("not valid YAML"));
}

#[test]
fn text_larger_than_a_file_may_be_is_refused_before_parsing() {
    let big = format!("# {}\n", "x".repeat(MAX_FILE_BYTES as usize));
    let msg = refused(&big);
    assert!(msg.contains("more than the"), "{msg}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("big.yaml"), &big).unwrap();
    let errs = load_path(dir.path()).expect_err("too large");
    assert!(errs.to_string().contains("more than the"), "{errs}");
}

#[test]
fn a_node_storm_is_refused_by_its_node_count() {
    // 3.5 million one-letter scalars in 7 MiB: within the file size, beyond
    // the node budget (a parsed tree of most of a GiB otherwise).
    let text = format!("a: [{}]\n", "x,".repeat(3_500_000));
    assert!((text.len() as u64) < MAX_FILE_BYTES);
    let msg = refused(&text);
    assert!(msg.contains("not valid YAML"), "{msg}");
}
