//! `mneme serve --config FILE` (or `MNEME_CONFIG=FILE`): the settings of `serve`
//! from a TOML file, one key per flag, named as the flag is:
//!
//! ```toml
//! data = "/var/lib/mneme"
//! listen = "0.0.0.0:8443"
//! max-active-entities = 50000
//! admin-token-file = "/etc/mneme/admin.token"
//! insecure = false
//! ```
//!
//! Precedence, highest first: the flag on the command line, its environment
//! variable (where it has one), the file, the default. A key that names no flag of
//! `serve`, or a value of the wrong kind, is an error naming the key and the file;
//! values are checked by the same parsers as the flags.
//!
//! How: before parsing, each key the command line and the environment leave open
//! becomes `--key value` on the command line, so clap parses and checks it like a
//! flag.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{ArgAction, CommandFactory};

use super::Cli;

/// `args` (the process's arguments) with the config file's settings added as flags.
pub fn with_config_file(args: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    if args.get(1).is_none_or(|a| a != "serve") {
        return Ok(args);
    }
    let Some(file) = config_path(&args[2..]) else { return Ok(args) };
    let text = std::fs::read_to_string(&file).with_context(|| format!("reading the config file {}", file.display()))?;
    let table: toml::Table =
        text.parse().with_context(|| format!("the config file {} is not valid TOML", file.display()))?;
    let cli = Cli::command();
    let serve = cli.find_subcommand("serve").expect("serve is a subcommand");
    let mut added: Vec<OsString> = Vec::new();
    for (key, value) in &table {
        let name = key.replace('_', "-");
        let arg = serve
            .get_arguments()
            .find(|a| a.get_long() == Some(name.as_str()) && name != "config")
            .with_context(|| format!("{}: `{key}` is not a setting of `mneme serve`", file.display()))?;
        let flag = format!("--{name}");
        let given = args[2..].iter().any(|a| {
            a.to_str().is_some_and(|a| a == flag || a.strip_prefix(&flag).is_some_and(|r| r.starts_with('=')))
        });
        let from_env = arg.get_env().is_some_and(|var| std::env::var_os(var).is_some());
        if given || from_env {
            continue;
        }
        let bad = |what: &str| anyhow::anyhow!("{}: `{key}` must be {what}", file.display());
        let switch = matches!(arg.get_action(), ArgAction::SetTrue);
        let values: Vec<String> = match value {
            toml::Value::Boolean(b) if switch => {
                if *b {
                    added.push(flag.clone().into());
                }
                continue;
            }
            _ if switch => return Err(bad("true or false")),
            toml::Value::String(s) => vec![s.clone()],
            toml::Value::Integer(i) => vec![i.to_string()],
            toml::Value::Float(f) => vec![f.to_string()],
            toml::Value::Boolean(b) => vec![b.to_string()],
            toml::Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => Ok(s.clone()),
                    toml::Value::Integer(i) => Ok(i.to_string()),
                    _ => Err(bad("a list of strings or numbers")),
                })
                .collect::<anyhow::Result<_>>()?,
            _ => return Err(bad("a string, a number, true/false or a list")),
        };
        for v in values {
            added.push(format!("{flag}={v}").into());
        }
    }
    let mut out = args[..2].to_vec();
    out.extend(added);
    out.extend(args[2..].iter().cloned());
    Ok(out)
}

/// `--config FILE` / `--config=FILE` among `serve`'s arguments, else `$MNEME_CONFIG`.
fn config_path(serve_args: &[OsString]) -> Option<PathBuf> {
    let mut it = serve_args.iter();
    while let Some(a) = it.next() {
        let Some(a) = a.to_str() else { continue };
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(p));
        }
    }
    std::env::var_os("MNEME_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(file: &str, flags: &[&str]) -> anyhow::Result<super::super::ServeArgs> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mneme.toml");
        std::fs::write(&path, file).unwrap();
        let mut args: Vec<OsString> = vec!["mneme".into(), "serve".into(), "--config".into(), path.into()];
        args.extend(flags.iter().map(OsString::from));
        let cli = Cli::try_parse_from(with_config_file(args)?)?;
        match cli.command {
            super::super::Command::Serve(s) => Ok(*s),
            _ => unreachable!(),
        }
    }

    #[test]
    fn the_file_sets_what_the_command_line_leaves_open() {
        let file = "listen = \"0.0.0.0:9000\"\nmax-active-entities = 5000\ninsecure = true\nsnapshot_every = 7\n";
        let s = parse(file, &["--snapshot-every", "9"]).unwrap();
        assert_eq!(s.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(s.max_active_entities, 5000);
        assert!(s.insecure);
        assert_eq!(s.snapshot_every, 9, "the flag wins over the file");
        let s = parse("insecure = false\n", &[]).unwrap();
        assert!(!s.insecure);
    }

    /// The example the README shows.
    #[test]
    fn the_example_file_parses_to_the_settings_it_names() {
        let s = parse(include_str!("../../../examples/config/mneme.toml"), &[]).unwrap();
        assert_eq!(s.data, PathBuf::from("/var/lib/mneme"));
        assert_eq!(s.listen.to_string(), "0.0.0.0:8443");
        assert_eq!(s.admin_token_file, Some(PathBuf::from("/etc/mneme/admin.token")));
        assert_eq!(s.max_active_entities, 50000);
    }

    fn refused(file: &str) -> String {
        match parse(file, &[]) {
            Err(e) => format!("{e:#}"),
            Ok(_) => panic!("accepted: {file}"),
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_by_name() {
        let e = refused("lisen = \"x\"\n");
        assert!(e.contains("`lisen` is not a setting of `mneme serve`"), "{e}");
        let e = refused("insecure = \"yes\"\n");
        assert!(e.contains("`insecure` must be true or false"), "{e}");
        let e = refused("max-active-entities = 0\n");
        assert!(e.contains("max-active-entities"), "{e}");
        let e = refused("listen = [\n");
        assert!(e.contains("is not valid TOML"), "{e}");
    }
}
