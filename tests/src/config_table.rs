//! The variables the binaries read, from their clap commands: the README's configuration table
//! and `deploy/env-vars.txt` (the names `deploy/check.sh` allows in the deploy files) must list
//! exactly these.

use std::collections::BTreeSet;

use clap::CommandFactory;

/// Variables read by something other than the clap commands: `RUST_LOG` is the tracing filter's.
pub const NOT_CLAP_VARIABLES: &[&str] = &["RUST_LOG"];

/// The command that rewrites `deploy/env-vars.txt`.
pub const REGENERATE: &str = "UPDATE_ENV_VARS=1 cargo test -p cio-sync-tests --lib config_table";

/// Every variable either binary reads: the `env` of every argument of `ingress` and `worker`, their
/// subcommands included, and [`NOT_CLAP_VARIABLES`].
pub fn env_var_names() -> BTreeSet<String> {
    let mut names = shared::config::env_names(&ingress::Cli::command());
    names.extend(shared::config::env_names(&worker::cli::Cli::command()));
    names.extend(NOT_CLAP_VARIABLES.iter().map(|s| s.to_string()));
    names
}

/// The contents of `deploy/env-vars.txt`: one name per line, sorted.
pub fn env_vars_file() -> String {
    env_var_names().into_iter().map(|n| n + "\n").collect()
}

/// The backticked names in the first column of the table under `## Configuration` in `readme`.
pub fn readme_table_names(readme: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let section = readme
        .split_once("\n## Configuration")
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let table = section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        // The header row and the separator row.
        .skip(2);
    for row in table {
        let first = row.split('|').nth(1).unwrap_or_default();
        for (i, part) in first.split('`').enumerate() {
            // The odd parts are inside backticks.
            if i % 2 == 1
                && !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                names.insert(part.to_string());
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn repo_file(path: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
    }

    fn difference(a: &BTreeSet<String>, b: &BTreeSet<String>) -> Vec<String> {
        a.difference(b).cloned().collect()
    }

    #[test]
    fn the_readme_table_lists_exactly_the_variables_the_binaries_read() {
        let readme = std::fs::read_to_string(repo_file("README.md")).unwrap();
        let documented = readme_table_names(&readme);
        let read = env_var_names();
        assert!(
            documented.len() > 10,
            "the configuration table was not found: {documented:?}"
        );
        assert!(
            documented == read,
            "README configuration table and code disagree:\n  read but not in the table: {:?}\n  in the table but not read: {:?}",
            difference(&read, &documented),
            difference(&documented, &read)
        );
    }

    #[test]
    fn deploy_env_vars_txt_is_up_to_date() {
        let path = repo_file("deploy/env-vars.txt");
        let want = env_vars_file();
        if std::env::var_os("UPDATE_ENV_VARS").is_some() {
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "deploy/env-vars.txt is out of date; regenerate it with:\n  {REGENERATE}"
        );
    }

    #[test]
    fn table_rows_may_list_several_names() {
        let readme = "x\n## Configuration\n\ntext\n\n| name | meaning |\n|---|---|\n| `A_B` | `not` this |\n| `SMTP_URL`, `MAIL_FROM` | y |\n\n| `LATER` | z |\n";
        let names: Vec<String> = readme_table_names(readme).into_iter().collect();
        assert_eq!(names, ["A_B", "MAIL_FROM", "SMTP_URL"]);
    }
}
