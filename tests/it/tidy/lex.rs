//! Rust source as tokens: identifiers (a raw `r#name` as `name`), `::`, single
//! punctuation characters, lifetimes, and each literal as one placeholder token. Comments
//! (doc comments too) are dropped and nothing inside a string, raw string, byte string or
//! character literal becomes a token, so prose and text never count as code. Every token
//! keeps its line.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Ident,
    Punct,
    Literal,
    Lifetime,
}

#[derive(Clone, Debug)]
pub(super) struct Token {
    pub text: String,
    pub kind: Kind,
    pub line: usize,
}

pub(super) fn tokenize(source: &str) -> Vec<Token> {
    Lexer {
        c: source.chars().collect(),
        i: 0,
        line: 1,
        out: Vec::new(),
    }
    .run()
}

struct Lexer {
    c: Vec<char>,
    i: usize,
    line: usize,
    out: Vec<Token>,
}

fn ident_start(ch: char) -> bool {
    ch.is_alphabetic() || ch == '_'
}

fn ident_char(ch: char) -> bool {
    ch.is_alphanumeric() || ch == '_'
}

impl Lexer {
    fn peek(&self, k: usize) -> char {
        self.c.get(self.i + k).copied().unwrap_or('\0')
    }

    /// Moves past one character, counting lines.
    fn bump(&mut self) {
        if self.peek(0) == '\n' {
            self.line += 1;
        }
        self.i += 1;
    }

    fn push(&mut self, text: String, kind: Kind, line: usize) {
        self.out.push(Token { text, kind, line });
    }

    fn run(mut self) -> Vec<Token> {
        while self.i < self.c.len() {
            let ch = self.peek(0);
            let line = self.line;
            if ch.is_whitespace() {
                self.bump();
            } else if ch == '/' && self.peek(1) == '/' {
                while self.i < self.c.len() && self.peek(0) != '\n' {
                    self.bump();
                }
            } else if ch == '/' && self.peek(1) == '*' {
                self.block_comment();
            } else if self.literal_prefix() {
                self.push("\"\"".into(), Kind::Literal, line);
            } else if ch == 'r' && self.peek(1) == '#' && ident_start(self.peek(2)) {
                self.i += 2;
                let name = self.ident();
                self.push(name, Kind::Ident, line);
            } else if ident_start(ch) {
                let name = self.ident();
                self.push(name, Kind::Ident, line);
            } else if ch.is_ascii_digit() {
                self.number();
                self.push("0".into(), Kind::Literal, line);
            } else if ch == '"' {
                self.i += 1;
                self.quoted('"');
                self.push("\"\"".into(), Kind::Literal, line);
            } else if ch == '\'' {
                self.quote_or_lifetime(line);
            } else if ch == ':' && self.peek(1) == ':' {
                self.i += 2;
                self.push("::".into(), Kind::Punct, line);
            } else {
                self.i += 1;
                self.push(ch.to_string(), Kind::Punct, line);
            }
        }
        self.out
    }

    fn ident(&mut self) -> String {
        let start = self.i;
        while ident_char(self.peek(0)) {
            self.i += 1;
        }
        self.c[start..self.i].iter().collect()
    }

    /// `/* ... */`, nested ones included.
    fn block_comment(&mut self) {
        let mut depth = 0;
        while self.i < self.c.len() {
            if self.peek(0) == '/' && self.peek(1) == '*' {
                depth += 1;
                self.i += 2;
            } else if self.peek(0) == '*' && self.peek(1) == '/' {
                depth -= 1;
                self.i += 2;
                if depth == 0 {
                    return;
                }
            } else {
                self.bump();
            }
        }
    }

    /// A literal with a prefix (`b"…"`, `b'…'`, `r"…"`, `r#"…"#`, `br…`, `c"…"`, `cr…`):
    /// consumes it and says so; anything else is left alone.
    fn literal_prefix(&mut self) -> bool {
        let ch = self.peek(0);
        if self.i > 0 && ident_char(self.c[self.i - 1]) {
            return false;
        }
        let (after, raw) = match (ch, self.peek(1)) {
            ('b' | 'c', 'r') => (2, true),
            ('r', _) => (1, true),
            ('b' | 'c', _) => (1, false),
            _ => return false,
        };
        let next = self.peek(after);
        if raw {
            let mut hashes = 0;
            while self.peek(after + hashes) == '#' {
                hashes += 1;
            }
            if self.peek(after + hashes) != '"' {
                return false;
            }
            self.i += after + hashes + 1;
            while self.i < self.c.len() {
                if self.peek(0) == '"' && (1..=hashes).all(|k| self.peek(k) == '#') {
                    self.i += 1 + hashes;
                    return true;
                }
                self.bump();
            }
            return true;
        }
        match next {
            '"' => {
                self.i += after + 1;
                self.quoted('"');
                true
            }
            '\'' if ch == 'b' => {
                self.i += after + 1;
                self.quoted('\'');
                true
            }
            _ => false,
        }
    }

    /// The rest of a quoted literal up to its unescaped closing `end`.
    fn quoted(&mut self, end: char) {
        while self.i < self.c.len() {
            match self.peek(0) {
                '\\' => {
                    self.i += 1;
                    self.bump();
                }
                c if c == end => {
                    self.i += 1;
                    return;
                }
                _ => self.bump(),
            }
        }
    }

    /// `'x'`, `'\n'`, `'\u{1b}'` are literals; `'a` and `'static` are lifetimes.
    fn quote_or_lifetime(&mut self, line: usize) {
        if self.peek(1) == '\\' || (self.peek(2) == '\'' && self.peek(1) != '\'') {
            self.i += 1;
            self.quoted('\'');
            self.push("''".into(), Kind::Literal, line);
        } else {
            self.i += 1;
            let name = self.ident();
            self.push(format!("'{name}"), Kind::Lifetime, line);
        }
    }

    /// Digits, suffixes, a fraction and an exponent; `1..2` stays a range.
    fn number(&mut self) {
        loop {
            let ch = self.peek(0);
            if ident_char(ch) {
                let exponent = (ch == 'e' || ch == 'E') && matches!(self.peek(1), '+' | '-');
                self.i += if exponent { 2 } else { 1 };
            } else if ch == '.' && self.peek(1).is_ascii_digit() {
                self.i += 1;
            } else {
                return;
            }
        }
    }
}

#[test]
fn tidy_lexer_skips_comments_strings_and_chars_and_keeps_lines() {
    let text = concat!(
        "a // x::y\n",
        "b /* c /* d */ e::f */ g \"h\\\"i::j\" r#\"k\"l\"# br##\"m\"# \"## 'n' '\\n' '\\'' b'o'\n",
        "fn p<'q>(s: &'static str) -> u8 { 1.5e-3 as u8 + 0x1f + 1..2 }\n",
        "r#type::x c\"y\" \"multi\nline\" z\n",
    );
    let tokens = tokenize(text);
    let words: Vec<&str> = tokens
        .iter()
        .filter(|t| t.kind == Kind::Ident)
        .map(|t| t.text.as_str())
        .collect();
    assert_eq!(
        words,
        ["a", "b", "g", "fn", "p", "s", "str", "u8", "as", "u8", "type", "x", "z"]
    );
    let lifetimes: Vec<&str> = tokens
        .iter()
        .filter(|t| t.kind == Kind::Lifetime)
        .map(|t| t.text.as_str())
        .collect();
    assert_eq!(lifetimes, ["'q", "'static"]);
    let line_of = |w: &str| tokens.iter().find(|t| t.text == w).map(|t| t.line);
    assert_eq!(line_of("g"), Some(2));
    assert_eq!(line_of("p"), Some(3));
    assert_eq!(line_of("type"), Some(4));
    assert_eq!(line_of("z"), Some(5), "a newline inside a string counts");
    // `1..2` is two numbers and a range, not one number.
    let dots = tokens.iter().filter(|t| t.text == ".").count();
    assert_eq!(dots, 2);
}
