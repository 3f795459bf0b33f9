//! A small parser for the subset of TOML that scenario files use, feeding serde.
//!
//! This crate has no TOML dependency, and scenarios need only a little of the language:
//! comments; `key = value` with bare or quoted keys (no dotted keys); `[table]` and
//! `[[array.of.tables]]` headers with dotted paths; basic `"..."` strings (escapes `\" \\ \n
//! \t \r \uXXXX`) and literal `'...'` strings; integers and floats (with `_` separators, sign,
//! exponent); booleans; arrays (over several lines, trailing comma allowed) and inline tables.
//! Not supported (reported as errors): dotted keys, multi-line strings, dates, `inf`/`nan`,
//! hexadecimal/octal/binary integers.
//!
//! [`from_str`] parses into a tree of [`Value`]s and deserializes the target type from it,
//! naming the path (`panels[1].faults[0].kind`) of any serde error.

use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor,
};

/// A parse or deserialization failure.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TomlError {
    /// 1-based line of a syntax error.
    pub line: Option<usize>,
    /// Where in the document a type error is (e.g. `panels[0].faults[1]`), if known.
    pub path: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for TomlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.line, &self.path) {
            (Some(line), _) => write!(f, "line {line}: {}", self.message),
            (None, Some(path)) if !path.is_empty() => write!(f, "{path}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for TomlError {}

impl de::Error for TomlError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        TomlError {
            line: None,
            path: None,
            message: msg.to_string(),
        }
    }
}

impl TomlError {
    fn syntax(line: usize, message: impl Into<String>) -> Self {
        TomlError {
            line: Some(line),
            path: None,
            message: message.into(),
        }
    }

    /// Attach `path` unless a deeper one is already attached.
    fn at(mut self, path: &str) -> Self {
        if self.path.is_none() && self.line.is_none() {
            self.path = Some(path.to_string());
        }
        self
    }
}

/// A parsed TOML value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    Array(Vec<Value>),
    /// Keys in document order.
    Table(Vec<(String, Value)>),
}

/// Parse `text` and deserialize a `T` from it.
pub(crate) fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, TomlError> {
    let root = parse(text)?;
    T::deserialize(ValueDeserializer {
        value: root,
        path: String::new(),
    })
}

/// Parse `text` into its root table.
pub(crate) fn parse(text: &str) -> Result<Value, TomlError> {
    let mut parser = Parser {
        chars: text.chars().collect(),
        pos: 0,
        line: 1,
    };
    parser.document()
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
    line: usize,
}

type Table = Vec<(String, Value)>;

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn err<T>(&self, message: impl Into<String>) -> Result<T, TomlError> {
        Err(TomlError::syntax(self.line, message))
    }

    /// Skip spaces and tabs (not newlines).
    fn skip_blanks(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t')) {
            self.bump();
        }
    }

    /// Skip a comment up to (not including) the end of line.
    fn skip_comment(&mut self) {
        if self.peek() == Some('#') {
            while !matches!(self.peek(), None | Some('\n')) {
                self.bump();
            }
        }
    }

    /// Skip blanks, comments and newlines.
    fn skip_trivia(&mut self) {
        loop {
            self.skip_blanks();
            self.skip_comment();
            match self.peek() {
                Some('\n') | Some('\r') => {
                    self.bump();
                }
                _ => return,
            }
        }
    }

    /// After a statement: only blanks and a comment may remain on the line.
    fn end_of_line(&mut self) -> Result<(), TomlError> {
        self.skip_blanks();
        self.skip_comment();
        match self.peek() {
            None => Ok(()),
            Some('\n') => {
                self.bump();
                Ok(())
            }
            Some('\r') if self.chars.get(self.pos + 1) == Some(&'\n') => {
                self.bump();
                self.bump();
                Ok(())
            }
            Some(c) => self.err(format!("unexpected `{c}` after the value")),
        }
    }

    fn document(&mut self) -> Result<Value, TomlError> {
        let mut root: Table = Vec::new();
        let mut current: Vec<String> = Vec::new();
        loop {
            self.skip_trivia();
            match self.peek() {
                None => return Ok(Value::Table(root)),
                Some('[') => {
                    let line = self.line;
                    self.bump();
                    let array = self.peek() == Some('[');
                    if array {
                        self.bump();
                    }
                    let path = self.header_path()?;
                    let closing = if array { "]]" } else { "]" };
                    for expected in closing.chars() {
                        if self.peek() != Some(expected) {
                            return self.err(format!("expected `{closing}` to close the header"));
                        }
                        self.bump();
                    }
                    self.end_of_line()?;
                    open_table(&mut root, &path, array, line)?;
                    current = path;
                }
                Some(_) => {
                    let line = self.line;
                    let key = self.key()?;
                    self.skip_blanks();
                    if self.peek() == Some('.') {
                        return self.err("dotted keys are not supported; use a [table] header");
                    }
                    if self.bump() != Some('=') {
                        return self.err(format!("expected `=` after key `{key}`"));
                    }
                    self.skip_blanks();
                    let value = self.value()?;
                    self.end_of_line()?;
                    let table = descend(&mut root, &current, line)?;
                    insert(table, key, value, line)?;
                }
            }
        }
    }

    fn header_path(&mut self) -> Result<Vec<String>, TomlError> {
        let mut path = Vec::new();
        loop {
            self.skip_blanks();
            path.push(self.key()?);
            self.skip_blanks();
            if self.peek() == Some('.') {
                self.bump();
            } else {
                return Ok(path);
            }
        }
    }

    fn key(&mut self) -> Result<String, TomlError> {
        match self.peek() {
            Some('"') => self.basic_string(),
            Some('\'') => self.literal_string(),
            _ => {
                let start = self.pos;
                while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    self.bump();
                }
                if self.pos == start {
                    return match self.peek() {
                        Some(c) => self.err(format!("expected a key, found `{c}`")),
                        None => self.err("expected a key, found the end of the file"),
                    };
                }
                Ok(self.chars[start..self.pos].iter().collect())
            }
        }
    }

    fn value(&mut self) -> Result<Value, TomlError> {
        match self.peek() {
            Some('"') => {
                if self.chars.get(self.pos..self.pos + 3) == Some(&['"', '"', '"']) {
                    return self.err("multi-line strings are not supported");
                }
                self.basic_string().map(Value::String)
            }
            Some('\'') => self.literal_string().map(Value::String),
            Some('[') => self.array(),
            Some('{') => self.inline_table(),
            Some('t' | 'f') => {
                let word = self.word();
                match word.as_str() {
                    "true" => Ok(Value::Boolean(true)),
                    "false" => Ok(Value::Boolean(false)),
                    _ => self.err(format!("unknown value `{word}` (strings need quotes)")),
                }
            }
            Some(c) if c.is_ascii_digit() || c == '+' || c == '-' || c == '.' => self.number(),
            Some(c) => self.err(format!(
                "unexpected `{c}` where a value should be (strings need quotes)"
            )),
            None => self.err("expected a value, found the end of the file"),
        }
    }

    fn word(&mut self) -> String {
        let start = self.pos;
        while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.' | ':'))
        {
            self.bump();
        }
        self.chars[start..self.pos].iter().collect()
    }

    fn number(&mut self) -> Result<Value, TomlError> {
        let word = self.word();
        let body = word.trim_start_matches(['+', '-']);
        if body.starts_with("0x") || body.starts_with("0o") || body.starts_with("0b") {
            return self.err(format!("`{word}`: only decimal numbers are supported"));
        }
        if word.contains(':') || body.matches('-').count() > 0 && !body.contains(['e', 'E']) {
            return self.err(format!("`{word}`: dates and times are not supported"));
        }
        if word.contains("__") || word.starts_with('_') || word.ends_with('_') {
            return self.err(format!("`{word}` is not a number"));
        }
        let digits: String = word.chars().filter(|&c| c != '_').collect();
        if digits.contains(['.', 'e', 'E']) {
            match digits.parse::<f64>() {
                Ok(f) if f.is_finite() && !digits.starts_with('.') && !digits.ends_with('.') => {
                    Ok(Value::Float(f))
                }
                _ => self.err(format!("`{word}` is not a number")),
            }
        } else {
            match digits.parse::<i64>() {
                Ok(i) => Ok(Value::Integer(i)),
                Err(_) => self.err(format!("`{word}` is not an integer in the 64-bit range")),
            }
        }
    }

    fn basic_string(&mut self) -> Result<String, TomlError> {
        self.bump(); // opening quote
        let mut out = String::new();
        loop {
            if matches!(self.peek(), None | Some('\n')) {
                return self.err("unterminated string");
            }
            match self.bump() {
                None => return self.err("unterminated string"),
                Some('"') => return Ok(out),
                Some('\\') => match self.bump() {
                    Some('"') => out.push('"'),
                    Some('\\') => out.push('\\'),
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some('r') => out.push('\r'),
                    Some('u') => {
                        let hex: String = (0..4).filter_map(|_| self.bump()).collect();
                        match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                            Some(c) if hex.len() == 4 => out.push(c),
                            _ => return self.err(format!("bad unicode escape `\\u{hex}`")),
                        }
                    }
                    Some(c) => return self.err(format!("unknown escape `\\{c}`")),
                    None => return self.err("unterminated string"),
                },
                Some(c) => out.push(c),
            }
        }
    }

    fn literal_string(&mut self) -> Result<String, TomlError> {
        self.bump(); // opening quote
        let mut out = String::new();
        loop {
            if matches!(self.peek(), None | Some('\n')) {
                return self.err("unterminated string");
            }
            match self.bump() {
                None => return self.err("unterminated string"),
                Some('\'') => return Ok(out),
                Some(c) => out.push(c),
            }
        }
    }

    fn array(&mut self) -> Result<Value, TomlError> {
        self.bump(); // [
        let mut items = Vec::new();
        loop {
            self.skip_trivia();
            if self.peek() == Some(']') {
                self.bump();
                return Ok(Value::Array(items));
            }
            items.push(self.value()?);
            self.skip_trivia();
            match self.bump() {
                Some(',') => {}
                Some(']') => return Ok(Value::Array(items)),
                _ => return self.err("expected `,` or `]` in the array"),
            }
        }
    }

    fn inline_table(&mut self) -> Result<Value, TomlError> {
        self.bump(); // {
        let mut table = Vec::new();
        self.skip_blanks();
        if self.peek() == Some('}') {
            self.bump();
            return Ok(Value::Table(table));
        }
        loop {
            self.skip_blanks();
            let key = self.key()?;
            self.skip_blanks();
            if self.bump() != Some('=') {
                return self.err(format!("expected `=` after key `{key}`"));
            }
            self.skip_blanks();
            let value = self.value()?;
            insert(&mut table, key, value, self.line)?;
            self.skip_blanks();
            match self.bump() {
                Some(',') => {}
                Some('}') => return Ok(Value::Table(table)),
                _ => return self.err("expected `,` or `}` in the inline table"),
            }
        }
    }
}

/// Create the table a header names (or append to the array of tables).
fn open_table(
    root: &mut Table,
    path: &[String],
    array: bool,
    line: usize,
) -> Result<(), TomlError> {
    let Some((last, parents)) = path.split_last() else {
        return Err(TomlError::syntax(line, "empty table header"));
    };
    let parent = descend(root, parents, line)?;
    match parent.iter_mut().find(|(k, _)| k == last) {
        None if array => parent.push((last.clone(), Value::Array(vec![Value::Table(Vec::new())]))),
        None => parent.push((last.clone(), Value::Table(Vec::new()))),
        Some((_, Value::Array(items))) if array => items.push(Value::Table(Vec::new())),
        Some((_, Value::Table(_))) if !array => {
            return Err(TomlError::syntax(
                line,
                format!("table `{}` is defined twice", path.join(".")),
            ))
        }
        Some(_) => {
            return Err(TomlError::syntax(
                line,
                format!("`{}` is already defined as another type", path.join(".")),
            ))
        }
    }
    Ok(())
}

/// The table at `path` below `root`, stepping into the last element of arrays of tables.
fn descend<'a>(
    root: &'a mut Table,
    path: &[String],
    line: usize,
) -> Result<&'a mut Table, TomlError> {
    let mut table = root;
    for key in path {
        let entry = match table.iter().position(|(k, _)| k == key) {
            Some(i) => &mut table[i].1,
            None => {
                table.push((key.clone(), Value::Table(Vec::new())));
                let last = table.len() - 1;
                &mut table[last].1
            }
        };
        table = match entry {
            Value::Table(t) => t,
            Value::Array(items) => match items.last_mut() {
                Some(Value::Table(t)) => t,
                _ => return Err(TomlError::syntax(line, format!("`{key}` is not a table"))),
            },
            _ => return Err(TomlError::syntax(line, format!("`{key}` is not a table"))),
        };
    }
    Ok(table)
}

fn insert(table: &mut Table, key: String, value: Value, line: usize) -> Result<(), TomlError> {
    if table.iter().any(|(k, _)| *k == key) {
        return Err(TomlError::syntax(
            line,
            format!("key `{key}` is defined twice"),
        ));
    }
    table.push((key, value));
    Ok(())
}

/// Deserializes a [`Value`], remembering where in the document it is for error messages.
struct ValueDeserializer {
    value: Value,
    path: String,
}

impl ValueDeserializer {
    fn type_name(&self) -> &'static str {
        match self.value {
            Value::String(_) => "a string",
            Value::Integer(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Boolean(_) => "a boolean",
            Value::Array(_) => "an array",
            Value::Table(_) => "a table",
        }
    }
}

impl<'de> de::Deserializer<'de> for ValueDeserializer {
    type Error = TomlError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TomlError> {
        let path = self.path;
        let result = match self.value {
            Value::String(s) => visitor.visit_string(s),
            Value::Integer(i) => visitor.visit_i64(i),
            Value::Float(f) => visitor.visit_f64(f),
            Value::Boolean(b) => visitor.visit_bool(b),
            Value::Array(items) => visitor.visit_seq(Seq {
                items: items.into_iter().enumerate(),
                path: path.clone(),
            }),
            Value::Table(entries) => visitor.visit_map(Map {
                entries: entries.into_iter(),
                pending: None,
                path: path.clone(),
            }),
        };
        result.map_err(|e| e.at(&path))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TomlError> {
        // TOML has no null: a present key is always `Some`.
        visitor.visit_some(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TomlError> {
        // Only unit variants, spelled as strings, are used in scenario files.
        match self.value {
            Value::String(s) => visitor
                .visit_enum(s.into_deserializer())
                .map_err(|e: TomlError| e.at(&self.path)),
            _ => Err(TomlError {
                line: None,
                path: Some(self.path.clone()),
                message: format!("expected a string, found {}", self.type_name()),
            }),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TomlError> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct identifier
        ignored_any
    }
}

impl<'de> IntoDeserializer<'de, TomlError> for ValueDeserializer {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

struct Seq {
    items: std::iter::Enumerate<std::vec::IntoIter<Value>>,
    path: String,
}

impl<'de> SeqAccess<'de> for Seq {
    type Error = TomlError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, TomlError> {
        match self.items.next() {
            None => Ok(None),
            Some((index, value)) => {
                let path = format!("{}[{index}]", self.path);
                seed.deserialize(ValueDeserializer { value, path })
                    .map(Some)
            }
        }
    }
}

struct Map {
    entries: std::vec::IntoIter<(String, Value)>,
    pending: Option<(String, Value)>,
    path: String,
}

impl<'de> MapAccess<'de> for Map {
    type Error = TomlError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, TomlError> {
        match self.entries.next() {
            None => Ok(None),
            Some((key, value)) => {
                let result = seed.deserialize(key.clone().into_deserializer()).map(Some);
                self.pending = Some((key, value));
                result
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, TomlError> {
        let Some((key, value)) = self.pending.take() else {
            return Err(de::Error::custom("value requested before its key"));
        };
        let path = if self.path.is_empty() {
            key
        } else {
            format!("{}.{key}", self.path)
        };
        seed.deserialize(ValueDeserializer { value, path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, Value)]) -> Value {
        Value::Table(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    #[test]
    fn parses_the_supported_subset() {
        let text = r#"
# a comment
seed = 42 # trailing comment
name = "panel \"n12\"\u00e9"
literal = 'C:\path'
big = 1_000
neg = -3
f = 2.5e-1
on = true
list = [1, 2,
  3, # comment inside
]
inline = { a = 1, "b c" = 'x' }

[wind]
scale = 1.0

[[panels]]
name = "a"
[[panels.faults]]
kind = "x"
[[panels]]
name = "b"
"#;
        let value = parse(text).expect("valid subset");
        let expected = table(&[
            ("seed", Value::Integer(42)),
            ("name", Value::String("panel \"n12\"é".into())),
            ("literal", Value::String("C:\\path".into())),
            ("big", Value::Integer(1000)),
            ("neg", Value::Integer(-3)),
            ("f", Value::Float(0.25)),
            ("on", Value::Boolean(true)),
            (
                "list",
                Value::Array(vec![
                    Value::Integer(1),
                    Value::Integer(2),
                    Value::Integer(3),
                ]),
            ),
            (
                "inline",
                table(&[("a", Value::Integer(1)), ("b c", Value::String("x".into()))]),
            ),
            ("wind", table(&[("scale", Value::Float(1.0))])),
            (
                "panels",
                Value::Array(vec![
                    table(&[
                        ("name", Value::String("a".into())),
                        (
                            "faults",
                            Value::Array(vec![table(&[("kind", Value::String("x".into()))])]),
                        ),
                    ]),
                    table(&[("name", Value::String("b".into()))]),
                ]),
            ),
        ]);
        assert_eq!(value, expected);
    }

    #[test]
    fn reports_syntax_errors_with_their_line() {
        let cases = [
            ("a = 1\na = 2\n", 2, "defined twice"),
            ("a = \"open\n", 1, "unterminated"),
            ("\n\na.b = 1\n", 3, "dotted keys"),
            ("a = hello\n", 1, "strings need quotes"),
            ("a = 1 2\n", 1, "after the value"),
            ("[t]\n[t]\n", 2, "defined twice"),
            ("a = 0x10\n", 1, "decimal"),
            ("a = 1979-05-27\n", 1, "dates"),
            ("a = [1, 2\n", 2, "expected `,` or `]`"),
            ("a = \"\"\"x\"\"\"\n", 1, "multi-line"),
            ("[[t]\n", 1, "close the header"),
            ("a = 1\n[a]\n", 2, "another type"),
        ];
        for (text, line, needle) in cases {
            let err = parse(text).expect_err(text);
            assert_eq!(err.line, Some(line), "{text:?}: {err}");
            assert!(err.message.contains(needle), "{text:?}: {err}");
        }
    }
}
