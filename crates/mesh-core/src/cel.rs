//! The part of CEL (Common Expression Language) that the Telemetry API's
//! expressions use: a metric tag's `value` and an access-log filter's
//! `expression`, over Envoy's request attributes.
//!
//! Read: attribute references (`request.method`, `request.headers['x']`,
//! `response.code`, `source.principal`... see [`Attr`]), string, integer,
//! boolean and `null` literals, `==`, `!=`, `<`, `<=`, `>`, `>=`, `&&`,
//! `||`, `!`, `?:` and parentheses. Anything else (function calls,
//! arithmetic, `in`, lists, maps, an attribute of Envoy's this mesh does not
//! have) is refused when the configuration is read, with the expression in
//! the message: it is never evaluated to something other than what Envoy
//! would give.
//!
//! Evaluation follows CEL as Envoy runs it (parsed, not type-checked): a
//! bare identifier that is no attribute (`add`) parses, and evaluating it
//! is an error ("no such attribute"), as is an attribute the request does
//! not have (a header it did not send) and a comparison of values of two
//! types. `&&` and `||` absorb an error where the other side decides
//! (`false && error` is `false`), as CEL's do.
//!
//! ```
//! use mesh_core::cel::{Attr, Attributes, Expr, Value};
//!
//! struct Req;
//! impl Attributes for Req {
//!     fn get(&self, attr: &Attr) -> Option<Value> {
//!         match attr {
//!             Attr::ResponseCode => Some(Value::Int(503)),
//!             _ => None,
//!         }
//!     }
//! }
//! let e = Expr::parse("response.code >= 500").unwrap();
//! assert_eq!(e.eval(&Req), Ok(Value::Bool(true)));
//! assert!(Expr::parse("size(request.path) > 3").is_err());
//! ```

use std::fmt;

/// A value an expression gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// `null`.
    Null,
}

impl Value {
    /// The value as a metric tag writes it: strings as they are, numbers
    /// in decimal, `true`/`false`, `null` empty.
    pub fn to_tag(&self) -> String {
        match self {
            Self::Str(s) => s.clone(),
            Self::Int(i) => i.to_string(),
            Self::Bool(b) => b.to_string(),
            Self::Null => String::new(),
        }
    }
}

/// The attributes of Envoy's that an expression may name (Envoy's
/// "Attributes" page; `source.principal` is the peer's SPIFFE ID, what
/// Envoy calls `connection.uri_san_peer_certificate`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Attr {
    /// `request.method`.
    RequestMethod,
    /// `request.host`: the authority.
    RequestHost,
    /// `request.path`: with the query.
    RequestPath,
    /// `request.url_path`: without the query.
    RequestUrlPath,
    /// `request.scheme`.
    RequestScheme,
    /// `request.protocol`: `HTTP/1.1`, `HTTP/2`.
    RequestProtocol,
    /// `request.id`: `x-request-id`.
    RequestId,
    /// `request.useragent`.
    RequestUserAgent,
    /// `request.referer`.
    RequestReferer,
    /// `request.headers['name']`, the name lowercased.
    RequestHeader(String),
    /// `response.code`.
    ResponseCode,
    /// `response.grpc_status`.
    ResponseGrpcStatus,
    /// `source.principal` (or `connection.uri_san_peer_certificate`).
    SourcePrincipal,
    /// `source.address`: `ip:port` of the downstream peer.
    SourceAddress,
    /// `source.port`.
    SourcePort,
    /// `destination.address`: the local address the request came to.
    DestinationAddress,
    /// `destination.port`.
    DestinationPort,
    /// `connection.mtls`.
    ConnectionMtls,
}

impl Attr {
    fn of_path(path: &[Segment]) -> Result<Option<Self>, String> {
        let names: Vec<&str> = path
            .iter()
            .map(|s| match s {
                Segment::Field(f) => f.as_str(),
                Segment::Index(_) => "[]",
            })
            .collect();
        let attr = match names.as_slice() {
            ["request", "method"] => Self::RequestMethod,
            ["request", "host"] => Self::RequestHost,
            ["request", "path"] => Self::RequestPath,
            ["request", "url_path"] => Self::RequestUrlPath,
            ["request", "scheme"] => Self::RequestScheme,
            ["request", "protocol"] => Self::RequestProtocol,
            ["request", "id"] => Self::RequestId,
            ["request", "useragent"] => Self::RequestUserAgent,
            ["request", "referer"] => Self::RequestReferer,
            ["request", "headers", "[]"] => match &path[2] {
                Segment::Index(h) => Self::RequestHeader(h.to_ascii_lowercase()),
                Segment::Field(_) => return Err("request.headers takes ['name']".to_owned()),
            },
            ["response", "code"] => Self::ResponseCode,
            ["response", "grpc_status"] => Self::ResponseGrpcStatus,
            ["source", "principal"] | ["connection", "uri_san_peer_certificate"] => {
                Self::SourcePrincipal
            }
            ["source", "address"] => Self::SourceAddress,
            ["source", "port"] => Self::SourcePort,
            ["destination", "address"] => Self::DestinationAddress,
            ["destination", "port"] => Self::DestinationPort,
            ["connection", "mtls"] => Self::ConnectionMtls,
            [_] => return Ok(None),
            _ => {
                let written = render_path(path);
                return Err(format!(
                    "attribute `{written}` is not one this mesh evaluates (it has request.method, \
                     request.host, request.path, request.url_path, request.scheme, \
                     request.protocol, request.id, request.useragent, request.referer, \
                     request.headers['name'], response.code, response.grpc_status, \
                     source.principal, source.address, source.port, destination.address, \
                     destination.port, connection.mtls)"
                ));
            }
        };
        Ok(Some(attr))
    }
}

fn render_path(path: &[Segment]) -> String {
    let mut out = String::new();
    for (i, s) in path.iter().enumerate() {
        match s {
            Segment::Field(f) => {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(f);
            }
            Segment::Index(k) => {
                out.push_str(&format!("['{k}']"));
            }
        }
    }
    out
}

/// What a request offers an expression.
pub trait Attributes {
    /// The attribute's value; `None` when the request has none (a header it
    /// did not send, no response yet).
    fn get(&self, attr: &Attr) -> Option<Value>;
}

/// Why an evaluation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvalError {
    /// An identifier that is no attribute (`add`), or an attribute the
    /// request does not have.
    NoSuchAttribute(String),
    /// Values of types the operator does not take together.
    NoMatchingOverload,
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSuchAttribute(a) => write!(f, "no such attribute: {a}"),
            Self::NoMatchingOverload => f.write_str("no matching overload"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Field(String),
    Index(String),
}

/// A parsed expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expr(Node);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Lit(Value),
    Attr(Attr),
    /// An identifier that names no attribute: an error when evaluated.
    Unbound(String),
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Cmp(CmpOp, Box<Node>, Box<Node>),
    Cond(Box<Node>, Box<Node>, Box<Node>),
}

impl Expr {
    /// Parses `src`; the error says what is not read, with the expression.
    pub fn parse(src: &str) -> Result<Self, String> {
        let tokens = lex(src).map_err(|e| format!("`{src}`: {e}"))?;
        let mut p = Parser { tokens, at: 0 };
        let e = p.cond().map_err(|e| format!("`{src}`: {e}"))?;
        if p.at != p.tokens.len() {
            return Err(format!(
                "`{src}`: {} is not read here (this mesh reads attributes, literals, ==, !=, <, <=, >, >=, &&, ||, ! and ?:)",
                p.tokens[p.at]
            ));
        }
        Ok(Self(e))
    }

    /// Whether the expression reads a request header (the data plane keeps
    /// the headers for such expressions only).
    pub fn reads_headers(&self) -> bool {
        self.0.reads_headers()
    }

    /// Evaluates the expression over `attrs`.
    pub fn eval(&self, attrs: &dyn Attributes) -> Result<Value, EvalError> {
        self.0.eval(attrs)
    }

    /// Whether the expression holds: `true`; anything else (false, an
    /// error, a value that is no boolean) does not. Envoy's access-log
    /// filter logs where its expression holds.
    pub fn holds(&self, attrs: &dyn Attributes) -> bool {
        matches!(self.eval(attrs), Ok(Value::Bool(true)))
    }
}

impl Node {
    fn reads_headers(&self) -> bool {
        match self {
            Self::Attr(Attr::RequestHeader(_)) => true,
            Self::Lit(_) | Self::Attr(_) | Self::Unbound(_) => false,
            Self::Not(a) => a.reads_headers(),
            Self::And(a, b) | Self::Or(a, b) | Self::Cmp(_, a, b) => {
                a.reads_headers() || b.reads_headers()
            }
            Self::Cond(a, b, c) => a.reads_headers() || b.reads_headers() || c.reads_headers(),
        }
    }

    fn eval(&self, attrs: &dyn Attributes) -> Result<Value, EvalError> {
        match self {
            Self::Lit(v) => Ok(v.clone()),
            Self::Attr(a) => attrs
                .get(a)
                .ok_or_else(|| EvalError::NoSuchAttribute(format!("{a:?}"))),
            Self::Unbound(name) => Err(EvalError::NoSuchAttribute(name.clone())),
            Self::Not(a) => match a.eval(attrs)? {
                Value::Bool(b) => Ok(Value::Bool(!b)),
                _ => Err(EvalError::NoMatchingOverload),
            },
            Self::And(a, b) => logic(a.eval(attrs), || b.eval(attrs), false),
            Self::Or(a, b) => logic(a.eval(attrs), || b.eval(attrs), true),
            Self::Cmp(op, a, b) => compare(*op, &a.eval(attrs)?, &b.eval(attrs)?),
            Self::Cond(c, t, e) => match c.eval(attrs)? {
                Value::Bool(true) => t.eval(attrs),
                Value::Bool(false) => e.eval(attrs),
                _ => Err(EvalError::NoMatchingOverload),
            },
        }
    }
}

/// CEL's commutative `&&` (`short` false) and `||` (`short` true): the
/// side that equals `short` decides, even against an error on the other.
fn logic(
    a: Result<Value, EvalError>,
    b: impl FnOnce() -> Result<Value, EvalError>,
    short: bool,
) -> Result<Value, EvalError> {
    let as_bool = |v: Result<Value, EvalError>| match v {
        Ok(Value::Bool(b)) => Ok(b),
        Ok(_) => Err(EvalError::NoMatchingOverload),
        Err(e) => Err(e),
    };
    let a = as_bool(a);
    if a == Ok(short) {
        return Ok(Value::Bool(short));
    }
    let b = as_bool(b());
    if b == Ok(short) {
        return Ok(Value::Bool(short));
    }
    match (a, b) {
        (Err(e), _) | (_, Err(e)) => Err(e),
        _ => Ok(Value::Bool(!short)),
    }
}

fn compare(op: CmpOp, a: &Value, b: &Value) -> Result<Value, EvalError> {
    use std::cmp::Ordering;
    let ord: Option<Ordering> = match (a, b) {
        (Value::Str(x), Value::Str(y)) => Some(x.cmp(y)),
        (Value::Int(x), Value::Int(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Null, Value::Null) => None,
        _ => {
            // CEL: `==` and `!=` across types are false and true (null
            // compares with anything); ordering across types has no
            // overload.
            return match op {
                CmpOp::Eq => Ok(Value::Bool(false)),
                CmpOp::Ne => Ok(Value::Bool(true)),
                _ => Err(EvalError::NoMatchingOverload),
            };
        }
    };
    let r = match (op, ord) {
        (CmpOp::Eq, o) => o.is_none_or(Ordering::is_eq),
        (CmpOp::Ne, o) => o.is_some_and(Ordering::is_ne),
        (_, None) => return Err(EvalError::NoMatchingOverload),
        (CmpOp::Lt, Some(o)) => o.is_lt(),
        (CmpOp::Le, Some(o)) => o.is_le(),
        (CmpOp::Gt, Some(o)) => o.is_gt(),
        (CmpOp::Ge, Some(o)) => o.is_ge(),
    };
    Ok(Value::Bool(r))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Str(String),
    Int(i64),
    Op(&'static str),
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ident(i) => write!(f, "`{i}`"),
            Self::Str(s) => write!(f, "'{s}'"),
            Self::Int(i) => write!(f, "`{i}`"),
            Self::Op(o) => write!(f, "`{o}`"),
        }
    }
}

const OPS: [&str; 17] = [
    "==", "!=", "<=", ">=", "&&", "||", "<", ">", "!", "?", ":", "(", ")", "[", "]", ".", ",",
];

fn lex(src: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Ident(src[start..i].to_owned()));
            continue;
        }
        if c.is_ascii_digit() {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i < b.len() && (b[i] == b'.' || b[i] == b'e' || b[i] == b'x') {
                return Err("only decimal integer literals are read".to_owned());
            }
            let n = src[start..i]
                .parse()
                .map_err(|_| format!("integer {} is out of range", &src[start..i]))?;
            // CEL's unsigned literal `200u` compares as the integer here.
            if i < b.len() && (b[i] == b'u' || b[i] == b'U') {
                i += 1;
            }
            out.push(Tok::Int(n));
            continue;
        }
        if c == b'\'' || c == b'"' {
            let mut s = String::new();
            let mut chars = src[i + 1..].char_indices();
            let mut end = None;
            while let Some((j, ch)) = chars.next() {
                match ch {
                    '\\' => match chars.next() {
                        Some((_, e @ ('\\' | '\'' | '"'))) => s.push(e),
                        Some((_, 'n')) => s.push('\n'),
                        Some((_, 't')) => s.push('\t'),
                        _ => {
                            return Err("only \\\\, \\', \\\", \\n and \\t escapes are read".into());
                        }
                    },
                    ch if ch == char::from(c) => {
                        end = Some(i + 1 + j + 1);
                        break;
                    }
                    ch => s.push(ch),
                }
            }
            let Some(end) = end else {
                return Err("a string is not closed".to_owned());
            };
            out.push(Tok::Str(s));
            i = end;
            continue;
        }
        let Some(op) = OPS.iter().find(|op| src[i..].starts_with(**op)) else {
            let ch = src[i..].chars().next().unwrap_or(' ');
            return Err(format!(
                "`{ch}` is not read (this mesh reads attributes, literals, ==, !=, <, <=, >, >=, &&, ||, ! and ?:)"
            ));
        };
        out.push(Tok::Op(op));
        i += op.len();
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Tok>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.at)
    }

    fn eat(&mut self, op: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Op(o)) if *o == op) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn cond(&mut self) -> Result<Node, String> {
        let c = self.or()?;
        if !self.eat("?") {
            return Ok(c);
        }
        let t = self.cond()?;
        if !self.eat(":") {
            return Err("`?` without its `:`".to_owned());
        }
        let e = self.cond()?;
        Ok(Node::Cond(Box::new(c), Box::new(t), Box::new(e)))
    }

    fn or(&mut self) -> Result<Node, String> {
        let mut a = self.and()?;
        while self.eat("||") {
            a = Node::Or(Box::new(a), Box::new(self.and()?));
        }
        Ok(a)
    }

    fn and(&mut self) -> Result<Node, String> {
        let mut a = self.rel()?;
        while self.eat("&&") {
            a = Node::And(Box::new(a), Box::new(self.rel()?));
        }
        Ok(a)
    }

    fn rel(&mut self) -> Result<Node, String> {
        let a = self.unary()?;
        let op = match self.peek() {
            Some(Tok::Op("==")) => CmpOp::Eq,
            Some(Tok::Op("!=")) => CmpOp::Ne,
            Some(Tok::Op("<")) => CmpOp::Lt,
            Some(Tok::Op("<=")) => CmpOp::Le,
            Some(Tok::Op(">")) => CmpOp::Gt,
            Some(Tok::Op(">=")) => CmpOp::Ge,
            _ => return Ok(a),
        };
        self.at += 1;
        let b = self.unary()?;
        if matches!(
            self.peek(),
            Some(Tok::Op("==" | "!=" | "<" | "<=" | ">" | ">="))
        ) {
            return Err("chained comparisons are not read; use && and parentheses".to_owned());
        }
        Ok(Node::Cmp(op, Box::new(a), Box::new(b)))
    }

    fn unary(&mut self) -> Result<Node, String> {
        if self.eat("!") {
            return Ok(Node::Not(Box::new(self.unary()?)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Node, String> {
        let Some(tok) = self.peek().cloned() else {
            return Err("the expression ends too early".to_owned());
        };
        self.at += 1;
        match tok {
            Tok::Str(s) => Ok(Node::Lit(Value::Str(s))),
            Tok::Int(i) => Ok(Node::Lit(Value::Int(i))),
            Tok::Op("(") => {
                let e = self.cond()?;
                if !self.eat(")") {
                    return Err("`(` is not closed".to_owned());
                }
                Ok(e)
            }
            Tok::Op("-") => Err("negative numbers are not read".to_owned()),
            Tok::Op(o) => Err(format!("`{o}` is not read here")),
            Tok::Ident(id) => match id.as_str() {
                "true" => Ok(Node::Lit(Value::Bool(true))),
                "false" => Ok(Node::Lit(Value::Bool(false))),
                "null" => Ok(Node::Lit(Value::Null)),
                _ => self.path(id),
            },
        }
    }

    fn path(&mut self, first: String) -> Result<Node, String> {
        if matches!(self.peek(), Some(Tok::Op("("))) {
            return Err(format!(
                "function `{first}` is not read (no function calls)"
            ));
        }
        let mut path = vec![Segment::Field(first)];
        loop {
            if self.eat(".") {
                match self.peek().cloned() {
                    Some(Tok::Ident(f)) => {
                        self.at += 1;
                        if matches!(self.peek(), Some(Tok::Op("("))) {
                            return Err(format!("function `{f}` is not read (no function calls)"));
                        }
                        path.push(Segment::Field(f));
                    }
                    _ => return Err("`.` must be followed by a field name".to_owned()),
                }
            } else if self.eat("[") {
                match self.peek().cloned() {
                    Some(Tok::Str(k)) => {
                        self.at += 1;
                        path.push(Segment::Index(k));
                    }
                    _ => return Err("an index must be a string literal: ['name']".to_owned()),
                }
                if !self.eat("]") {
                    return Err("`[` is not closed".to_owned());
                }
            } else {
                break;
            }
        }
        match Attr::of_path(&path)? {
            Some(a) => Ok(Node::Attr(a)),
            None => match path.into_iter().next() {
                Some(Segment::Field(name)) => Ok(Node::Unbound(name)),
                _ => Err("an expression cannot start with an index".to_owned()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Map(HashMap<Attr, Value>);

    impl Attributes for Map {
        fn get(&self, attr: &Attr) -> Option<Value> {
            self.0.get(attr).cloned()
        }
    }

    fn req() -> Map {
        Map(HashMap::from([
            (Attr::RequestMethod, Value::Str("GET".into())),
            (Attr::RequestHost, Value::Str("reviews".into())),
            (Attr::ResponseCode, Value::Int(503)),
            (
                Attr::RequestHeader("x-user".into()),
                Value::Str("ann".into()),
            ),
            (Attr::ConnectionMtls, Value::Bool(true)),
        ]))
    }

    fn eval(src: &str) -> Result<Value, EvalError> {
        Expr::parse(src).unwrap().eval(&req())
    }

    #[test]
    fn attributes_and_literals() {
        assert_eq!(eval("request.method"), Ok(Value::Str("GET".into())));
        assert_eq!(
            eval("request.headers['X-User']"),
            Ok(Value::Str("ann".into()))
        );
        assert_eq!(
            eval("request.headers[\"x-user\"]"),
            Ok(Value::Str("ann".into()))
        );
        assert_eq!(eval("response.code"), Ok(Value::Int(503)));
        assert_eq!(eval("'lit'"), Ok(Value::Str("lit".into())));
        assert_eq!(eval("42"), Ok(Value::Int(42)));
        assert_eq!(eval("true"), Ok(Value::Bool(true)));
    }

    #[test]
    fn comparisons_and_logic() {
        assert_eq!(eval("response.code >= 500"), Ok(Value::Bool(true)));
        assert_eq!(eval("response.code < 400"), Ok(Value::Bool(false)));
        assert_eq!(eval("response.code == 503u"), Ok(Value::Bool(true)));
        assert_eq!(eval("request.method != 'GET'"), Ok(Value::Bool(false)));
        assert_eq!(
            eval("request.method == 'GET' && response.code > 499"),
            Ok(Value::Bool(true))
        );
        assert_eq!(
            eval("!(response.code >= 500) || false"),
            Ok(Value::Bool(false))
        );
        assert_eq!(
            eval("connection.mtls ? 'yes' : 'no'"),
            Ok(Value::Str("yes".into()))
        );
        assert_eq!(
            eval("response.code >= 500 ? 'err' : response.code >= 400 ? 'client' : 'ok'"),
            Ok(Value::Str("err".into()))
        );
    }

    #[test]
    fn errors_as_cel_gives_them() {
        // An identifier that is no attribute: parsed, an error when read.
        assert_eq!(eval("add"), Err(EvalError::NoSuchAttribute("add".into())));
        // A header the request did not send.
        assert!(matches!(
            eval("request.headers['absent'] == 'x'"),
            Err(EvalError::NoSuchAttribute(_))
        ));
        // Ordering across types has no overload; equality is false.
        assert_eq!(
            eval("response.code > 'a'"),
            Err(EvalError::NoMatchingOverload)
        );
        assert_eq!(eval("response.code == 'a'"), Ok(Value::Bool(false)));
        // && and || absorb an error the other side decides.
        assert_eq!(eval("add && false"), Ok(Value::Bool(false)));
        assert_eq!(eval("true || add"), Ok(Value::Bool(true)));
        assert!(eval("add && true").is_err());
        assert!(!Expr::parse("add").unwrap().holds(&req()));
        assert!(!Expr::parse("'x'").unwrap().holds(&req()));
    }

    #[test]
    fn refused_with_the_expression() {
        for (src, why) in [
            ("size(request.path) > 3", "function `size`"),
            ("request.path.startsWith('/a')", "function `startsWith`"),
            ("response.code + 1", "`+`"),
            ("request.method in ['GET']", "`in`"),
            ("upstream.address", "attribute `upstream.address`"),
            ("request.size", "attribute `request.size`"),
            ("request.headers.x", "attribute `request.headers.x`"),
            ("1 < 2 < 3", "chained"),
            ("'open", "not closed"),
            ("(true", "not closed"),
            ("1.5", "integer literals"),
            ("", "ends too early"),
            ("true ? 'a'", "`?` without"),
        ] {
            let e = Expr::parse(src).unwrap_err();
            assert!(e.contains(&format!("`{src}`")), "{src}: {e}");
            assert!(e.contains(why), "{src}: {e}");
        }
    }

    #[test]
    fn reads_headers_only_where_named() {
        assert!(
            Expr::parse("request.headers['a'] == 'b' || false")
                .unwrap()
                .reads_headers()
        );
        assert!(!Expr::parse("response.code >= 500").unwrap().reads_headers());
    }

    #[test]
    fn tag_values() {
        assert_eq!(Value::Int(7).to_tag(), "7");
        assert_eq!(Value::Bool(false).to_tag(), "false");
        assert_eq!(Value::Str("a".into()).to_tag(), "a");
    }
}
