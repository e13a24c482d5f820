//! INI text → sections that remember line numbers, and a typed reader per
//! section that records every problem (never only the first) and every key it
//! did not consume, so unknown keys are reported as errors.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::str::FromStr;

/// One `key = value` line.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    pub value: String,
    pub line: usize,
}

/// One `[name]` section and its entries in file order.
#[derive(Debug, Clone)]
pub struct Section {
    pub name: String,
    pub line: usize,
    pub entries: Vec<Entry>,
}

/// A parsed file: its name (for messages) and its sections by name.
#[derive(Debug, Clone, Default)]
pub struct Document {
    pub origin: String,
    pub sections: BTreeMap<String, Section>,
}

/// One problem, printed as `config.ini:12 [ingest] workers: expected …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub origin: String,
    pub line: Option<usize>,
    pub section: String,
    pub key: Option<String>,
    pub message: String,
}

/// The items of a comma-separated value, trimmed, empty ones dropped.
pub fn comma_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(String::from)
        .collect()
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, " [{}]", self.section)?;
        if let Some(key) = &self.key {
            write!(f, " {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in one file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Document {
    /// Parses INI text. Syntax problems (a broken `[section`, a line without
    /// `=`, a key before any section, a repeated key) go into `errors`.
    pub fn parse(origin: &str, text: &str, errors: &mut ConfigErrors) -> Document {
        let mut doc = Document {
            origin: origin.to_string(),
            sections: BTreeMap::new(),
        };
        let mut current: Option<String> = None;
        let mut line = 0usize;
        for item in ini_roundtrip::Parser::new(text) {
            use ini_roundtrip::Item;
            if !matches!(item, Item::SectionEnd) {
                line += 1;
            }
            let syntax = |section: &Option<String>, message: String| ConfigError {
                origin: origin.to_string(),
                line: Some(line),
                section: section.clone().unwrap_or_default(),
                key: None,
                message,
            };
            match item {
                Item::SectionEnd | Item::Comment { .. } | Item::Blank { .. } => {}
                Item::Error(raw) => errors.0.push(syntax(
                    &current,
                    format!("malformed section header {raw:?}: expected [name]"),
                )),
                Item::Section { name, .. } => {
                    let name = name.trim().to_string();
                    if doc.sections.contains_key(&name) {
                        errors
                            .0
                            .push(syntax(&Some(name.clone()), "section appears twice".into()));
                    } else {
                        doc.sections.insert(
                            name.clone(),
                            Section {
                                name: name.clone(),
                                line,
                                entries: Vec::new(),
                            },
                        );
                    }
                    current = Some(name);
                }
                Item::Property { key, val, .. } => {
                    let key = key.trim();
                    let Some(val) = val else {
                        errors.0.push(syntax(
                            &current,
                            format!("line {key:?} is not `key = value`"),
                        ));
                        continue;
                    };
                    let Some(section) = current.as_ref().and_then(|s| doc.sections.get_mut(s))
                    else {
                        errors.0.push(syntax(
                            &current,
                            format!("key {key:?} appears before any [section]"),
                        ));
                        continue;
                    };
                    if section.entries.iter().any(|e| e.key == key) {
                        errors.0.push(ConfigError {
                            key: Some(key.to_string()),
                            ..syntax(&current, "key appears twice in this section".into())
                        });
                        continue;
                    }
                    section.entries.push(Entry {
                        key: key.to_string(),
                        value: val.trim().to_string(),
                        line,
                    });
                }
            }
        }
        doc
    }

    /// A reader over `[name]`; an absent section reads as empty.
    pub fn reader<'a>(&'a self, name: &str, errors: &'a mut ConfigErrors) -> SectionReader<'a> {
        SectionReader {
            origin: &self.origin,
            name: name.to_string(),
            section: self.sections.get(name),
            used: Vec::new(),
            errors,
        }
    }
}

/// Typed access to one section. Each getter marks its key as used and, on a
/// bad value, records an error and returns the default so that reading goes on.
pub struct SectionReader<'a> {
    origin: &'a str,
    name: String,
    section: Option<&'a Section>,
    used: Vec<String>,
    errors: &'a mut ConfigErrors,
}

impl<'a> SectionReader<'a> {
    pub fn exists(&self) -> bool {
        self.section.is_some()
    }

    pub fn entry(&mut self, key: &str) -> Option<&'a Entry> {
        self.used.push(key.to_string());
        self.section?.entries.iter().find(|e| e.key == key)
    }

    /// Records a problem with `key` (at its line when the key is present).
    pub fn error(&mut self, key: &str, message: String) {
        let line = self
            .section
            .and_then(|s| s.entries.iter().find(|e| e.key == key))
            .map(|e| e.line)
            .or(self.section.map(|s| s.line));
        self.errors.0.push(ConfigError {
            origin: self.origin.to_string(),
            line,
            section: self.name.clone(),
            key: Some(key.to_string()),
            message,
        });
    }

    /// Raw string value; `None` when absent.
    pub fn opt_str(&mut self, key: &str) -> Option<String> {
        self.entry(key).map(|e| e.value.clone())
    }

    pub fn string(&mut self, key: &str, default: &str) -> String {
        self.opt_str(key).unwrap_or_else(|| default.to_string())
    }

    /// A value that must be present and non-empty.
    pub fn required(&mut self, key: &str) -> String {
        match self.opt_str(key) {
            Some(v) if !v.is_empty() => v,
            _ => {
                self.error(key, "required key is missing or empty".into());
                String::new()
            }
        }
    }

    pub fn int<T>(&mut self, key: &str, default: T, range: RangeInclusive<T>) -> T
    where
        T: FromStr + PartialOrd + Copy + fmt::Display,
    {
        let Some(raw) = self.opt_str(key) else {
            return default;
        };
        match raw.replace('_', "").parse::<T>() {
            Ok(v) if range.contains(&v) => v,
            _ => {
                self.error(
                    key,
                    format!(
                        "expected an integer in {}..={}, got {raw:?}",
                        range.start(),
                        range.end()
                    ),
                );
                default
            }
        }
    }

    pub fn bool(&mut self, key: &str, default: bool) -> bool {
        match self.opt_str(key).as_deref() {
            None => default,
            Some("true" | "yes" | "on" | "1") => true,
            Some("false" | "no" | "off" | "0") => false,
            Some(other) => {
                self.error(key, format!("expected true or false, got {other:?}"));
                default
            }
        }
    }

    /// One of a fixed set of words.
    pub fn choice<T: Copy>(&mut self, key: &str, default: T, choices: &[(&str, T)]) -> T {
        let Some(raw) = self.opt_str(key) else {
            return default;
        };
        if let Some((_, v)) = choices.iter().find(|(name, _)| *name == raw) {
            return *v;
        }
        let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        self.error(
            key,
            format!("expected one of {}, got {raw:?}", names.join(" | ")),
        );
        default
    }

    pub fn socket_addr(&mut self, key: &str, default: &str) -> SocketAddr {
        let raw = self.string(key, default);
        match raw.parse() {
            Ok(a) => a,
            Err(_) => {
                self.error(
                    key,
                    format!("expected host:port like {default}, got {raw:?}"),
                );
                // The default is a literal of ours and always parses.
                default
                    .parse()
                    .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
            }
        }
    }

    /// Every entry of the section, marking all as used (for pass-through
    /// sections such as `[kafka]` and maps such as `[ingest.routes]`).
    pub fn all(&mut self) -> Vec<&'a Entry> {
        let entries: Vec<&'a Entry> = self
            .section
            .map(|s| s.entries.iter().collect())
            .unwrap_or_default();
        self.used.extend(entries.iter().map(|e| e.key.clone()));
        entries
    }

    /// Reports every key nobody asked for.
    pub fn finish(self) {
        let Some(section) = self.section else { return };
        for e in &section.entries {
            if !self.used.contains(&e.key) {
                self.errors.0.push(ConfigError {
                    origin: self.origin.to_string(),
                    line: Some(e.line),
                    section: self.name.clone(),
                    key: Some(e.key.clone()),
                    message: "unknown key".into(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comma_lists_trim_and_drop_empty_items() {
        assert_eq!(comma_list(" a, b ,,c ,"), vec!["a", "b", "c"]);
        assert!(comma_list(" , ").is_empty());
    }

    fn parse(text: &str) -> (Document, ConfigErrors) {
        let mut errors = ConfigErrors::default();
        let doc = Document::parse("t.ini", text, &mut errors);
        (doc, errors)
    }

    #[test]
    fn remembers_line_numbers_across_comments_and_blanks() {
        let (doc, errors) = parse("; top\n\n[a]\n# c\nx = 1\n\n[b]\ny=two words\n");
        assert!(errors.0.is_empty(), "{errors}");
        assert_eq!(doc.sections["a"].line, 3);
        assert_eq!(doc.sections["a"].entries[0].line, 5);
        assert_eq!(doc.sections["b"].entries[0].value, "two words");
        assert_eq!(doc.sections["b"].entries[0].line, 8);
    }

    #[test]
    fn reports_syntax_errors_with_lines() {
        let (_, errors) = parse("x = 1\n[a\n[b]\nnovalue\ny = 1\ny = 2\n");
        let text = errors.to_string();
        assert!(
            text.contains("t.ini:1 []: key \"x\" appears before any [section]"),
            "{text}"
        );
        assert!(
            text.contains("t.ini:2 []: malformed section header"),
            "{text}"
        );
        assert!(
            text.contains("t.ini:4 [b]: line \"novalue\" is not `key = value`"),
            "{text}"
        );
        assert!(text.contains("t.ini:6 [b] y: key appears twice"), "{text}");
    }

    #[test]
    fn typed_getters_collect_every_error_and_unknown_keys() {
        let (doc, mut errors) = parse("[s]\nn = abc\nm = 999\nb = maybe\nc = blue\nzz = 1\n");
        let mut r = doc.reader("s", &mut errors);
        assert_eq!(r.int("n", 8u32, 1..=256), 8);
        assert_eq!(r.int("m", 8u32, 1..=256), 8);
        assert!(r.bool("b", true));
        assert_eq!(r.choice("c", 1, &[("red", 1), ("green", 2)]), 1);
        assert_eq!(r.int("absent", 7u32, 1..=9), 7);
        r.finish();
        let text = errors.to_string();
        assert_eq!(errors.0.len(), 5, "{text}");
        assert!(text.contains("t.ini:2 [s] n: expected an integer in 1..=256, got \"abc\""));
        assert!(text.contains("t.ini:3 [s] m: expected an integer in 1..=256, got \"999\""));
        assert!(text.contains("t.ini:4 [s] b: expected true or false, got \"maybe\""));
        assert!(text.contains("t.ini:5 [s] c: expected one of red | green, got \"blue\""));
        assert!(text.contains("t.ini:6 [s] zz: unknown key"));
    }

    #[test]
    fn required_key_missing_names_the_section_line() {
        let (doc, mut errors) = parse("[kafka]\n");
        let mut r = doc.reader("kafka", &mut errors);
        assert_eq!(r.required("brokers"), "");
        r.finish();
        assert_eq!(
            errors.to_string(),
            "t.ini:1 [kafka] brokers: required key is missing or empty"
        );
    }
}
