//! Checks the parsed TOML tree against the schema in `raw` before deserializing it, so
//! that unknown keys and wrongly typed values get precise, friendly errors (the key
//! that is wrong, the closest valid key, the type expected, an example).

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::error::{ConfigError, ErrorKind, Source};
use crate::raw::{KeySpec, TableSpec, ValueType, DAEMON, DEVICE};

/// Checks every key and value type of `table` (recursively) against `spec`. Keys are
/// visited in file order so the first problem in the file is the one reported.
pub(crate) fn check_table(
    src: &Source<'_>,
    table: &DeTable<'_>,
    spec: &TableSpec,
) -> Result<(), ConfigError> {
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    for (key, value) in entries {
        let Some(key_spec) = spec.key(key.get_ref()) else {
            return Err(unknown_key(src, key.get_ref(), key.span(), spec));
        };
        check_value(src, key_spec, value)?;
    }
    Ok(())
}

fn check_value(
    src: &Source<'_>,
    spec: &KeySpec,
    value: &Spanned<DeValue<'_>>,
) -> Result<(), ConfigError> {
    match (spec.ty, value.get_ref()) {
        (ValueType::Integer | ValueType::Id, DeValue::Integer(i))
            if i64::from_str_radix(i.as_str(), i.radix()).is_err() =>
        {
            let msg = format!("the value of `{}` is too large", spec.name);
            Err(src
                .error(ErrorKind::InvalidValue, value.span(), msg)
                .with_help(format!("for example: {}", spec.example)))
        }
        (ValueType::String, DeValue::String(_))
        | (ValueType::Integer, DeValue::Integer(_))
        | (ValueType::Boolean, DeValue::Boolean(_))
        | (ValueType::Id, DeValue::String(_) | DeValue::Integer(_)) => Ok(()),
        (ValueType::IntegerArray, DeValue::Array(items)) => items
            .iter()
            .try_for_each(|item| check_element(src, spec, item)),
        (ValueType::StringArray, DeValue::Array(items)) => {
            for item in items.iter() {
                if !matches!(item.get_ref(), DeValue::String(_)) {
                    let msg = format!(
                        "each element of `{}` must be a string, not {}",
                        spec.name,
                        article(item.get_ref().type_str())
                    );
                    return Err(src
                        .error(ErrorKind::WrongType, item.span(), msg)
                        .with_help(format!("for example: {}", spec.example)));
                }
            }
            Ok(())
        }
        (ValueType::Table(inner), DeValue::Table(t)) => check_table(src, t, inner),
        (ValueType::TableArray(inner), DeValue::Array(items)) => {
            for item in items.iter() {
                match item.get_ref() {
                    DeValue::Table(t) => check_table(src, t, inner)?,
                    other => {
                        let msg = format!(
                            "each `{}` entry must be a table, not {}",
                            spec.name,
                            article(other.type_str())
                        );
                        return Err(src
                            .error(ErrorKind::WrongType, item.span(), msg)
                            .with_help(format!("write each entry as a {} table", inner.title)));
                    }
                }
            }
            Ok(())
        }
        (expected, found) => Err(wrong_type(src, spec, expected, found, value.span())),
    }
}

/// One element of an [`ValueType::IntegerArray`]: an integer that fits in an `i64`.
/// Errors point at the element, not at the whole array.
fn check_element(
    src: &Source<'_>,
    spec: &KeySpec,
    item: &Spanned<DeValue<'_>>,
) -> Result<(), ConfigError> {
    match item.get_ref() {
        DeValue::Integer(i) if i64::from_str_radix(i.as_str(), i.radix()).is_ok() => Ok(()),
        DeValue::Integer(_) => {
            let msg = format!("an element of `{}` is too large", spec.name);
            Err(src
                .error(ErrorKind::InvalidValue, item.span(), msg)
                .with_help(format!("for example: {}", spec.example)))
        }
        other => {
            let msg = format!(
                "each element of `{}` must be an integer, not {}",
                spec.name,
                article(other.type_str())
            );
            let help = match other {
                DeValue::String(s) if s.trim().parse::<i64>().is_ok() => {
                    format!("remove the quotes: {}", spec.example)
                }
                _ => format!("for example: {}", spec.example),
            };
            Err(src
                .error(ErrorKind::WrongType, item.span(), msg)
                .with_help(help))
        }
    }
}

/// "a string", "an integer", ... for a TOML type name.
fn article(type_str: &str) -> String {
    match type_str.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => format!("an {type_str}"),
        _ => format!("a {type_str}"),
    }
}

fn wrong_type(
    src: &Source<'_>,
    spec: &KeySpec,
    expected: ValueType,
    found: &DeValue<'_>,
    span: std::ops::Range<usize>,
) -> ConfigError {
    let msg = format!(
        "`{}` must be {}, not {}",
        spec.name,
        expected.describe(),
        article(found.type_str())
    );
    let help = match (expected, found) {
        (ValueType::Integer, DeValue::String(s)) if s.trim().parse::<i64>().is_ok() => {
            format!("remove the quotes: {}", spec.example)
        }
        (ValueType::Boolean, DeValue::String(s)) if matches!(s.as_ref(), "true" | "false") => {
            format!("remove the quotes: {}", spec.example)
        }
        (ValueType::IntegerArray, DeValue::Integer(i)) => {
            match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => format!("write a list, even of one value: {} = [{n}]", spec.name),
                Err(_) => format!("write a list of integers, e.g. {}", spec.example),
            }
        }
        (ValueType::IntegerArray, _) => {
            format!("write a list of integers, e.g. {}", spec.example)
        }
        (ValueType::StringArray, DeValue::String(s)) => {
            format!("write a list, even of one value: {} = [\"{s}\"]", spec.name)
        }
        (ValueType::String, DeValue::Integer(_)) if spec.name.ends_with("socket_mode") => {
            format!("write the mode as a quoted octal string: {}", spec.example)
        }
        (ValueType::String, _) => format!("put the value in double quotes, e.g. {}", spec.example),
        (ValueType::TableArray(inner), DeValue::Table(_)) => {
            format!(
                "write each entry as a {} table (double brackets)",
                inner.title
            )
        }
        _ => format!("for example: {}", spec.example),
    };
    src.error(ErrorKind::WrongType, span, msg).with_help(help)
}

fn unknown_key(
    src: &Source<'_>,
    key: &str,
    span: std::ops::Range<usize>,
    spec: &TableSpec,
) -> ConfigError {
    let valid = format!("valid keys in {} are: {}", spec.title, spec.key_list());
    if let Some(best) = closest(key, spec.keys.iter().map(|k| k.name)) {
        let msg = format!("unknown key `{key}`, did you mean `{best}`?");
        return src.error(ErrorKind::UnknownKey, span, msg).with_help(valid);
    }
    let msg = format!("unknown key `{key}` in {}", spec.title);
    // A device or daemon key at the top level usually means a missing table header.
    let help = [&DEVICE, &DAEMON]
        .into_iter()
        .filter(|table| table.title != spec.title)
        .find(|table| table.key(key).is_some())
        .map_or(valid, |table| {
            format!(
                "`{key}` is a key of {0} tables; put it below a {0} header",
                table.title
            )
        });
    src.error(ErrorKind::UnknownKey, span, msg).with_help(help)
}

/// The candidate closest to `word`, if it is close enough to be a likely typo: at most
/// one edit for short words, up to a third of the length for longer ones.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .map(|c| (edit_distance(&word.to_ascii_lowercase(), c), c))
        .filter(|&(d, c)| d <= (c.len() / 3).max(1))
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// Optimal string alignment distance: insertions, deletions, substitutions and
/// transpositions of adjacent characters each cost one.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for (i, row) in d.chunks_mut(width).enumerate() {
        row[0] = i;
    }
    for (j, cell) in d.iter_mut().take(width).enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[(i - 1) * width + j] + 1)
                .min(d[i * width + j - 1] + 1)
                .min(d[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = best;
        }
    }
    d[a.len() * width + b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_transpositions_once() {
        assert_eq!(edit_distance("queue_szie", "queue_size"), 1);
        assert_eq!(edit_distance("mtu", "mac"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("socket", "socket"), 0);
    }

    #[test]
    fn closest_rejects_far_candidates() {
        let keys = DEVICE.keys.iter().map(|k| k.name);
        assert_eq!(closest("queue_szie", keys.clone()), Some("queue_size"));
        assert_eq!(closest("Mac", keys.clone()), Some("mac"));
        assert_eq!(closest("evnt_idx", keys.clone()), Some("event_idx"));
        assert_eq!(closest("colour", keys), None);
    }
}
