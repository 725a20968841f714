//! The CI boot cache action (`.github/actions/thaw-up/action.yml`) run as two "jobs" on
//! this machine, since GitHub's runners are not reachable from here: the action's file
//! is parsed, its `run:` steps run with bash in order (inputs, step outputs,
//! `$GITHUB_OUTPUT`, `$GITHUB_ENV`, `$RUNNER_TEMP` as a runner gives them), and
//! `actions/cache/restore` / `actions/cache/save` copy from / to a directory per key.
//! The first job (empty home, empty cache) boots and saves; the second (another empty
//! home, the same cache) restores without booting, and its VM answers.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::Env;
use serde_yaml::Value;

const ACTION: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../.github/actions/thaw-up/action.yml"
);

/// One job's runner: its temporary directory, the environment `$GITHUB_ENV` built up,
/// and each step's outputs.
struct Runner<'a> {
    action: &'a Value,
    inputs: BTreeMap<String, String>,
    temp: tempfile::TempDir,
    cache: &'a Path,
    env: BTreeMap<String, String>,
    outputs: BTreeMap<String, BTreeMap<String, String>>,
}

impl<'a> Runner<'a> {
    fn new(action: &'a Value, given: &[(&str, &str)], cache: &'a Path) -> Runner<'a> {
        let mut inputs = BTreeMap::new();
        for (name, spec) in action["inputs"].as_mapping().unwrap() {
            let default = spec["default"].as_str().unwrap_or("").to_owned();
            inputs.insert(name.as_str().unwrap().to_owned(), default);
        }
        for (k, v) in given {
            assert!(inputs.contains_key(*k), "the action has no input {k}");
            inputs.insert(k.to_string(), v.to_string());
        }
        Runner {
            action,
            inputs,
            temp: tempfile::tempdir().unwrap(),
            cache,
            env: BTreeMap::new(),
            outputs: BTreeMap::new(),
        }
    }

    /// The value of one expression the action uses; any other is a test failure (the
    /// action would need a runner feature this emulation lacks).
    fn eval(&self, expr: &str) -> String {
        let parts: Vec<&str> = expr.trim().split('.').collect();
        match parts.as_slice() {
            ["inputs", name] => self.inputs[*name].clone(),
            ["steps", id, "outputs", key] => self
                .outputs
                .get(*id)
                .and_then(|o| o.get(*key))
                .cloned()
                .unwrap_or_default(),
            ["runner", "temp"] => self.temp.path().display().to_string(),
            ["github", "action_path"] => Path::new(ACTION).parent().unwrap().display().to_string(),
            _ => panic!("an expression this emulation does not know: {expr}"),
        }
    }

    /// `${{ ... }}` replaced in `text`.
    fn expand(&self, text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${{") {
            out.push_str(&rest[..start]);
            let end = rest[start..].find("}}").expect("a closed expression") + start;
            out.push_str(&self.eval(&rest[start + 3..end]));
            rest = &rest[end + 2..];
        }
        out.push_str(rest);
        out
    }

    /// A step's `if:` (`A == 'x'` or `A != 'x'`).
    fn condition(&self, cond: &str) -> bool {
        let (lhs, op, rhs) = [" == ", " != "]
            .iter()
            .find_map(|op| cond.split_once(op).map(|(l, r)| (l, *op, r)))
            .unwrap_or_else(|| panic!("a condition this emulation does not know: {cond}"));
        let rhs = rhs.trim().trim_matches('\'');
        (self.eval(lhs) == rhs) == (op == " == ")
    }

    fn run(&mut self) {
        for step in self.action["runs"]["steps"].as_sequence().unwrap() {
            let name = step["name"].as_str().unwrap_or("a step");
            if let Some(cond) = step["if"].as_str() {
                if !self.condition(cond) {
                    continue;
                }
            }
            let outputs = match (step["uses"].as_str(), step["run"].as_str()) {
                (Some(uses), None) => self.uses(uses, step),
                (None, Some(script)) => self.bash(name, script, step),
                _ => panic!("step {name:?}: neither uses nor run"),
            };
            if let Some(id) = step["id"].as_str() {
                self.outputs.insert(id.to_owned(), outputs);
            }
        }
    }

    /// `actions/cache/restore` and `actions/cache/save`, on `self.cache/KEY`.
    fn uses(&self, uses: &str, step: &Value) -> BTreeMap<String, String> {
        let with = |k: &str| self.expand(step["with"][k].as_str().unwrap());
        let (path, key) = (PathBuf::from(with("path")), with("key"));
        assert!(!key.is_empty(), "an empty cache key");
        let entry = self.cache.join(&key);
        let mut out = BTreeMap::new();
        match uses.split_once('@').map(|(a, _)| a) {
            Some("actions/cache/restore") => {
                let hit = entry.is_dir();
                if hit {
                    copy_dir(&entry, &path);
                }
                out.insert("cache-hit".into(), hit.to_string());
            }
            Some("actions/cache/save") => {
                assert!(!entry.exists(), "GitHub's cache entries are immutable");
                copy_dir(&path, &entry);
            }
            _ => panic!("an action this emulation does not know: {uses}"),
        }
        out
    }

    /// A `run:` step as a runner runs `shell: bash`.
    fn bash(&mut self, name: &str, script: &str, step: &Value) -> BTreeMap<String, String> {
        assert_eq!(step["shell"].as_str(), Some("bash"), "step {name:?}");
        let dir = self.temp.path();
        let file = dir.join("step.sh");
        std::fs::write(&file, script).unwrap();
        let (output, env_file) = (dir.join("github_output"), dir.join("github_env"));
        std::fs::write(&output, "").unwrap();
        std::fs::write(&env_file, "").unwrap();
        let bin = Path::new(common::THAW).parent().unwrap();
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
        let mut c = Command::new("bash");
        c.args(["--noprofile", "--norc", "-eo", "pipefail"])
            .arg(&file)
            .env_remove("THAW_HOME")
            .env_remove("THAW_LOG")
            .env("PATH", path)
            .env("RUNNER_TEMP", dir)
            .env("GITHUB_OUTPUT", &output)
            .env("GITHUB_ENV", &env_file)
            .envs(&self.env);
        if let Some(env) = step["env"].as_mapping() {
            for (k, v) in env {
                c.env(k.as_str().unwrap(), self.expand(v.as_str().unwrap()));
            }
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "step {name:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.env.extend(key_values(&env_file));
        key_values(&output)
    }
}

fn key_values(file: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        match e.file_type().unwrap().is_dir() {
            true => copy_dir(&e.path(), &target),
            false => {
                std::fs::copy(e.path(), target).unwrap();
            }
        }
    }
}

fn files_under(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        match e.file_type().unwrap().is_dir() {
            true => v.extend(files_under(&e.path())),
            false => v.push((e.path(), e.metadata().unwrap().len())),
        }
    }
    v
}

#[test]
fn the_first_job_boots_and_saves_the_second_restores_from_the_cache() {
    let action: Value = serde_yaml::from_str(&std::fs::read_to_string(ACTION).unwrap()).unwrap();
    assert_eq!(action["runs"]["using"], "composite");
    let cache = tempfile::tempdir().unwrap();

    // Job 1: an empty home and an empty cache.
    let home1 = Env::new();
    let mut job1 = Runner::new(
        &action,
        &[("name", "ci"), ("home", home1.path().to_str().unwrap())],
        cache.path(),
    );
    job1.run();
    assert_eq!(job1.outputs["restore"]["cache-hit"], "false");
    assert_eq!(job1.outputs["up"]["path"], "booted");
    let key = job1.outputs["key"]["key"].clone();
    assert_eq!(
        common::dir_names(cache.path()),
        std::slice::from_ref(&key),
        "one entry, saved under the key"
    );
    let saved = files_under(&cache.path().join(&key));
    assert_eq!(saved.len(), 1, "one file: {saved:?}");
    eprintln!("the cache entry: {} bytes", saved[0].1);
    // The key is the one `thaw up` used.
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(job1.temp.path().join("thaw-up.json")).unwrap())
            .unwrap();
    assert_eq!(format!("thaw-up-{}", report["key"].as_str().unwrap()), key);
    assert_eq!(home1.sh("ci", "echo job1"), "job1\n");

    // Job 2: another empty home, the same cache: restored, no boot.
    let home2 = Env::new();
    assert!(home2.snapshot_dirs().is_empty());
    let mut job2 = Runner::new(
        &action,
        &[("name", "ci"), ("home", home2.path().to_str().unwrap())],
        cache.path(),
    );
    job2.run();
    assert_eq!(job2.outputs["key"]["key"], key);
    assert_eq!(job2.outputs["restore"]["cache-hit"], "true");
    assert_eq!(
        job2.outputs["up"]["path"], "restored",
        "no cold boot in job 2"
    );
    assert_eq!(home2.sh("ci", "echo job2"), "job2\n");
    assert_eq!(
        common::dir_names(cache.path()),
        [key],
        "a hit saves nothing"
    );
    assert_eq!(home2.processes().len(), 1, "one QEMU: the restored VM");
}
