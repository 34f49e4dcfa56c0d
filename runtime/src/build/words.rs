//! The builder's own small shell-word language, used on the arguments of `ADD`, `COPY`, `ENV`,
//! `EXPOSE`, `FROM`, `LABEL`, `STOPSIGNAL`, `USER`, `VOLUME`, `WORKDIR` and `ARG`: `$name`,
//! `${name}`, `${name:-word}` / `${name-word}`, `${name:+word}` / `${name+word}`, single and
//! double quotes, and the escape character. (`RUN` is left to the container's shell.)

/// Looks a variable up: the build args in scope and the image's environment.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Expands `text` as one word: quotes removed, whitespace kept.
pub fn word(text: &str, vars: Lookup<'_>, escape: char) -> Result<String, String> {
    Ok(lex(text, vars, escape, false)?.join(""))
}

/// Splits `text` into words at unquoted whitespace, each expanded and unquoted.
pub fn words(text: &str, vars: Lookup<'_>, escape: char) -> Result<Vec<String>, String> {
    lex(text, vars, escape, true)
}

/// `key=value` pairs (`ENV`, `LABEL`), or the old `key value` form when the first word has no
/// `=`.
pub fn pairs(text: &str, vars: Lookup<'_>, escape: char, what: &str) -> Result<Vec<(String, String)>, String> {
    let first = text.split_whitespace().next().unwrap_or("");
    if !first.contains('=') {
        let (key, value) =
            text.trim().split_once(char::is_whitespace).ok_or_else(|| format!("{what} must have two arguments"))?;
        return Ok(vec![(key.to_owned(), word(value.trim(), vars, escape)?)]);
    }
    words(text, vars, escape)?
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(format!("Syntax error - can't find = in \"{w}\". Must be of the form: name=value")),
        })
        .collect()
}

fn lex(text: &str, vars: Lookup<'_>, escape: char, split: bool) -> Result<Vec<String>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut cur = String::new();
    // A word may be empty but present (`""`).
    let mut started = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if split && c.is_whitespace() {
            if started {
                out.push(std::mem::take(&mut cur));
                started = false;
            }
            i += 1;
            continue;
        }
        started = true;
        if c == escape {
            match chars.get(i + 1) {
                Some(&n) => cur.push(n),
                None => cur.push(c),
            }
            i += 2;
        } else if c == '\'' {
            let end = chars[i + 1..]
                .iter()
                .position(|&x| x == '\'')
                .ok_or("unexpected end of statement while looking for matching single-quote")?;
            cur.extend(&chars[i + 1..i + 1 + end]);
            i += end + 2;
        } else if c == '"' {
            i += 1;
            loop {
                let Some(&d) = chars.get(i) else {
                    return Err("unexpected end of statement while looking for matching double-quote".into());
                };
                if d == '"' {
                    i += 1;
                    break;
                }
                if d == escape && chars.get(i + 1).is_some_and(|&n| n == '"' || n == '$' || n == escape) {
                    cur.push(chars[i + 1]);
                    i += 2;
                } else if d == '$' {
                    i = variable(&chars, i, vars, escape, &mut cur)?;
                } else {
                    cur.push(d);
                    i += 1;
                }
            }
        } else if c == '$' {
            i = variable(&chars, i, vars, escape, &mut cur)?;
        } else {
            cur.push(c);
            i += 1;
        }
    }
    if started || !split {
        out.push(cur);
    }
    Ok(out)
}

fn is_name(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Expands the variable at `chars[at]` (a `$`) into `out`; returns the index after it.
fn variable(chars: &[char], at: usize, vars: Lookup<'_>, escape: char, out: &mut String) -> Result<usize, String> {
    let mut i = at + 1;
    match chars.get(i) {
        Some('{') => {
            i += 1;
            let name_start = i;
            while chars.get(i).is_some_and(|&c| is_name(c)) {
                i += 1;
            }
            let name: String = chars[name_start..i].iter().collect();
            if name.is_empty() {
                return Err(format!("bad substitution: {}", chars[at..].iter().collect::<String>()));
            }
            let value = vars(&name);
            match chars.get(i) {
                Some('}') => {
                    out.push_str(&value.unwrap_or_default());
                    Ok(i + 1)
                }
                Some(&c) if c == ':' || c == '-' || c == '+' => {
                    let colon = c == ':';
                    if colon {
                        i += 1;
                    }
                    let op = *chars.get(i).ok_or("missing '}'")?;
                    if op != '-' && op != '+' {
                        return Err(format!("unsupported modifier ({op}) in substitution"));
                    }
                    i += 1;
                    // The word runs to the matching brace.
                    let word_start = i;
                    let mut depth = 0;
                    while let Some(&c) = chars.get(i) {
                        if c == escape {
                            i += 2;
                            continue;
                        }
                        if c == '{' {
                            depth += 1;
                        } else if c == '}' {
                            if depth == 0 {
                                break;
                            }
                            depth -= 1;
                        }
                        i += 1;
                    }
                    if chars.get(i) != Some(&'}') {
                        return Err("missing '}'".into());
                    }
                    let alt: String = chars[word_start..i].iter().collect();
                    let set = if colon { value.as_deref().is_some_and(|v| !v.is_empty()) } else { value.is_some() };
                    let chosen = match (op, set) {
                        ('-', true) => value.unwrap_or_default(),
                        ('-', false) | ('+', true) => word(&alt, vars, escape)?,
                        _ => String::new(),
                    };
                    out.push_str(&chosen);
                    Ok(i + 1)
                }
                _ => Err("missing '}'".into()),
            }
        }
        Some(&c) if is_name(c) => {
            let name_start = i;
            while chars.get(i).is_some_and(|&c| is_name(c)) {
                i += 1;
            }
            let name: String = chars[name_start..i].iter().collect();
            out.push_str(&vars(&name).unwrap_or_default());
            Ok(i)
        }
        _ => {
            out.push('$');
            Ok(i)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "A" => Some("one".into()),
            "E" => Some(String::new()),
            "SP" => Some("x y".into()),
            _ => None,
        }
    }

    #[test]
    fn variables_quotes_and_escapes() {
        let w = |s| word(s, &env, '\\').unwrap();
        assert_eq!(w("$A/${A}b"), "one/oneb");
        assert_eq!(w("${B:-def} ${E:-empty} ${E-unset} ${A:+alt} ${B:+alt}"), "def empty  alt ");
        assert_eq!(w("'$A' \"$A\" \\$A"), "$A one $A");
        assert_eq!(w("\"a \\\"q\\\" b\""), "a \"q\" b");
        assert_eq!(w("${B:-$A-x}"), "one-x");
        assert_eq!(w("cost $5"), "cost ");
        assert_eq!(w("a $ b"), "a $ b");
        assert!(word("${A", &env, '\\').is_err());
        assert!(word("'open", &env, '\\').is_err());
        assert_eq!(words("a \"b c\" $SP ''", &env, '\\').unwrap(), vec!["a", "b c", "x y", ""]);
    }

    #[test]
    fn env_pairs_in_both_forms() {
        assert_eq!(
            pairs("K=\"v 1\" L=$A M=", &env, '\\', "ENV").unwrap(),
            vec![("K".into(), "v 1".into()), ("L".into(), "one".into()), ("M".into(), String::new())]
        );
        assert_eq!(pairs("K  value with $A", &env, '\\', "ENV").unwrap(), vec![("K".into(), "value with one".into())]);
        assert!(pairs("K=1 oops", &env, '\\', "ENV").is_err());
        assert!(pairs("K", &env, '\\', "ENV").is_err());
    }
}
