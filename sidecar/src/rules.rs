//! Which scopes an MCP operation needs, and whether a token's scopes cover them. Pure and table-tested.

use std::collections::{BTreeMap, BTreeSet};

use crate::caller::{Caller, Callers};
use crate::config::{ScopeRule, SidecarConfig, UnmatchedPolicy};

/// One JSON-RPC call as the rules see it: the method and, for the methods that have one, the name of the
/// thing it touches (tool name, resource URI, prompt name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// JSON-RPC method.
    pub method: String,
    /// Tool name, resource URI or prompt name.
    pub name: Option<String>,
}

impl Operation {
    /// An operation without a name.
    pub fn method(method: &str) -> Self {
        Self {
            method: method.into(),
            name: None,
        }
    }
    /// An operation on a named thing.
    pub fn named(method: &str, name: &str) -> Self {
        Self {
            method: method.into(),
            name: Some(name.into()),
        }
    }
}

/// The outcome of checking one operation against one token's scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The token may do it.
    Allow,
    /// The token lacks some scope; `required` lists all the scopes the operation needs (for the challenge).
    MissingScopes {
        /// Every scope the operation needs, not only the missing ones.
        required: Vec<String>,
    },
    /// No token may do it (no rule allows it and the default is deny).
    Forbidden,
    /// The rule deciding it admits only these callers, and the token's is not one of them: no scope would help.
    CallerNotAdmitted(Callers),
}

/// What decides one operation (`mcp-authz explain` names it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement<'a> {
    /// The first rule of the config matching the operation, by its position.
    Rule {
        /// Position in the config's `rules`.
        index: usize,
        /// The rule.
        rule: &'a ScopeRule,
    },
    /// A method open to any valid token (`openMethods`, the protocol's own housekeeping).
    OpenMethod(&'a str),
    /// No rule matched: the config's default.
    Unmatched(&'a UnmatchedPolicy),
}

impl<'a> Requirement<'a> {
    /// The scopes it needs, all of them, or `None` when no token may perform the operation.
    pub fn scopes(self) -> Option<&'a [String]> {
        match self {
            Self::Rule { rule, .. } => Some(&rule.scopes),
            Self::OpenMethod(_) => Some(&[]),
            Self::Unmatched(UnmatchedPolicy::Deny) => None,
            Self::Unmatched(UnmatchedPolicy::Allow) => Some(&[]),
            Self::Unmatched(UnmatchedPolicy::RequireScopes(scopes)) => Some(scopes),
        }
    }

    /// Who may perform the operation: a rule's `callers`, anyone otherwise.
    pub fn callers(self) -> Callers {
        match self {
            Self::Rule { rule, .. } => rule.callers,
            Self::OpenMethod(_) | Self::Unmatched(_) => Callers::Anyone,
        }
    }
}

/// The compiled rules of one config.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<ScopeRule>,
    open_methods: Vec<String>,
    unmatched: UnmatchedPolicy,
    /// For each scope, every scope it implies (transitively), itself included.
    closure: BTreeMap<String, BTreeSet<String>>,
}

impl Policy {
    /// Compiles the rules of a config.
    pub fn from_config(config: &SidecarConfig) -> Self {
        Self {
            rules: config.rules.clone(),
            open_methods: config.open_methods.clone(),
            unmatched: config.unmatched.clone(),
            closure: transitive_closure(&config.scope_implies),
        }
    }

    /// What decides an operation: the first rule matching it, else an open method, else the default.
    pub fn requirement(&self, op: &Operation) -> Requirement<'_> {
        let name = op.name.as_deref();
        if let Some((index, rule)) = self.rules.iter().enumerate().find(|(_, r)| {
            glob_match(&r.method, &op.method)
                && r.name
                    .as_deref()
                    .is_none_or(|pattern| name.is_some_and(|n| glob_match(pattern, n)))
        }) {
            return Requirement::Rule { index, rule };
        }
        if let Some(pattern) = self.open_methods.iter().find(|m| glob_match(m, &op.method)) {
            return Requirement::OpenMethod(pattern);
        }
        Requirement::Unmatched(&self.unmatched)
    }

    /// The scopes an operation needs, or `None` when it is forbidden to everyone.
    pub fn required_scopes(&self, op: &Operation) -> Option<&[String]> {
        self.requirement(op).scopes()
    }

    /// Expands granted scopes through the hierarchy.
    pub fn effective_scopes<'a>(
        &self,
        granted: impl IntoIterator<Item = &'a str>,
    ) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for scope in granted {
            match self.closure.get(scope) {
                Some(implied) => out.extend(implied.iter().cloned()),
                None => {
                    out.insert(scope.to_owned());
                }
            }
        }
        out
    }

    /// The scopes a challenge names for a request made of `ops` (MCP authorization, "Scope Selection
    /// Strategy" and "Runtime Insufficient Scope Errors", SEP-2350): every scope any of its operations needs,
    /// allowed ones included, so a token holding exactly these satisfies the whole request, in the order the
    /// rules name them. Not the union of every scope the service knows: a client is told what this request
    /// needs. `None` when an operation is forbidden to every token (no scope would help) or none needs any.
    /// `caller` is who holds the token refused, `None` for a request without one.
    pub fn scopes_for<'a>(
        &self,
        ops: impl IntoIterator<Item = &'a Operation>,
        caller: Option<Caller>,
    ) -> Option<Vec<String>> {
        let mut scopes: Vec<String> = Vec::new();
        for op in ops {
            let requirement = self.requirement(op);
            // Only a machine is told a machines-only rule's scopes: a challenge without a token sends a person to
            // consent, who would grant powers they can never use here (and learn their names by asking).
            if requirement.callers() == Callers::Machines
                && caller != Some(Caller::Machine)
                && requirement.scopes().is_some()
            {
                continue;
            }
            for scope in requirement.scopes()? {
                if !scopes.contains(scope) {
                    scopes.push(scope.clone());
                }
            }
        }
        (!scopes.is_empty()).then_some(scopes)
    }

    /// Decides one operation for a token of `caller` whose scopes were expanded with `effective_scopes`. Who
    /// called is checked before the scopes: a step-up challenge would not help a caller the rule refuses.
    pub fn decide(&self, op: &Operation, effective: &BTreeSet<String>, caller: Caller) -> Decision {
        let requirement = self.requirement(op);
        let callers = requirement.callers();
        match requirement.scopes() {
            None => Decision::Forbidden,
            Some(_) if !callers.admits(caller) => Decision::CallerNotAdmitted(callers),
            Some(required) if required.iter().all(|s| effective.contains(s)) => Decision::Allow,
            Some(required) => Decision::MissingScopes {
                required: required.to_vec(),
            },
        }
    }
}

fn transitive_closure(
    implies: &BTreeMap<String, Vec<String>>,
) -> BTreeMap<String, BTreeSet<String>> {
    let mut closure = BTreeMap::new();
    for start in implies.keys() {
        let mut seen = BTreeSet::from([start.clone()]);
        let mut todo = vec![start.as_str()];
        while let Some(scope) = todo.pop() {
            for next in implies.get(scope).into_iter().flatten() {
                // `seen` also stops cycles (a implies b implies a).
                if seen.insert(next.clone()) {
                    todo.push(next);
                }
            }
        }
        closure.insert(start.clone(), seen);
    }
    closure
}

/// Glob match where `*` is any run of characters (`/` included) and `?` exactly one character.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    // This runs for every rule an operation is tried against: ASCII names and patterns (nearly all) are
    // matched in place, others as characters, since `?` stands for one character, not one byte.
    if pattern.is_ascii() && text.is_ascii() {
        glob_match_units(pattern.as_bytes(), text.as_bytes(), b'*', b'?')
    } else {
        let p: Vec<char> = pattern.chars().collect();
        let t: Vec<char> = text.chars().collect();
        glob_match_units(&p, &t, '*', '?')
    }
}

fn glob_match_units<T: Copy + PartialEq>(p: &[T], t: &[T], any: T, one: T) -> bool {
    let (mut pi, mut ti) = (0, 0);
    // Position of the last `*` and the text position it was tried at: backtracking is linear per star.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == one || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == any {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == any)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml_tail: &str) -> Policy {
        let text = format!(
            "upstream: http://127.0.0.1:1\nresource: https://r.example/mcp\nissuer: https://i.example\n\
             jwksUri: https://i.example/jwks\n{yaml_tail}"
        );
        Policy::from_config(&SidecarConfig::parse(&text).unwrap())
    }

    #[test]
    fn the_requirement_names_what_decided() {
        let p = policy(
            "rules:\n- {method: tools/call, name: 'get_*', scopes: [read]}\n\
             - {method: 'tools/*', scopes: [admin]}\nunmatched: {requireScopes: [root]}\n",
        );
        let deny = policy("rules: []\n");
        let root = UnmatchedPolicy::RequireScopes(vec!["root".into()]);
        type Case<'a> = (
            &'a str,
            &'a Policy,
            Operation,
            Option<usize>,
            Option<Vec<&'a str>>,
        );
        let cases: Vec<Case> = vec![
            (
                "first rule",
                &p,
                Operation::named("tools/call", "get_x"),
                Some(0),
                Some(vec!["read"]),
            ),
            (
                "second rule, any name",
                &p,
                Operation::named("tools/call", "rm"),
                Some(1),
                Some(vec!["admin"]),
            ),
            (
                "no name matches a named rule",
                &p,
                Operation::method("tools/list"),
                Some(1),
                Some(vec!["admin"]),
            ),
            (
                "the default",
                &p,
                Operation::method("custom/op"),
                None,
                Some(vec!["root"]),
            ),
            (
                "deny by default",
                &deny,
                Operation::method("custom/op"),
                None,
                None,
            ),
        ];
        for (what, policy, op, index, scopes) in cases {
            let requirement = policy.requirement(&op);
            let got_index = match requirement {
                Requirement::Rule { index, .. } => Some(index),
                _ => None,
            };
            assert_eq!(got_index, index, "{what}");
            let scopes: Option<Vec<String>> =
                scopes.map(|s| s.iter().map(|x| x.to_string()).collect());
            assert_eq!(
                requirement.scopes().map(<[String]>::to_vec),
                scopes,
                "{what}"
            );
        }
        assert_eq!(
            p.requirement(&Operation::method("custom/op")),
            Requirement::Unmatched(&root)
        );
        assert_eq!(
            p.requirement(&Operation::method("ping")),
            Requirement::OpenMethod("ping")
        );
    }

    #[test]
    fn a_challenge_names_what_this_request_needs() {
        let p = policy(
            "scopesSupported: [basic]\nrules:\n\
             - {method: tools/call, name: 'get_*', scopes: [read]}\n\
             - {method: tools/call, name: 'delete_*', scopes: [admin, audit]}\n\
             - {method: resources/subscribe, name: 'file:///a', scopes: [read]}\n\
             - {method: resources/subscribe, name: 'file:///b', scopes: [admin]}\n\
             - {method: tools/call, name: 'other_*', scopes: [other]}\n",
        );
        let call = |name: &str| Operation::named("tools/call", name);
        let listen = [
            Operation::method("subscriptions/listen"),
            Operation::named("resources/subscribe", "file:///a"),
            Operation::named("resources/subscribe", "file:///b"),
        ];
        type Case<'a> = (&'a str, Vec<Operation>, Option<Vec<&'a str>>);
        let cases: Vec<Case> = vec![
            ("one call", vec![call("get_user")], Some(vec!["read"])),
            (
                "every scope of the rule",
                vec![call("delete_user")],
                Some(vec!["admin", "audit"]),
            ),
            // Not `other`, which another tool of the service needs.
            (
                "a batch: its own operations only",
                vec![call("get_user"), call("delete_user")],
                Some(vec!["read", "admin", "audit"]),
            ),
            (
                "a listen stream: the allowed sub-operation too",
                listen.to_vec(),
                Some(vec!["read", "admin"]),
            ),
            (
                "open methods need no scope",
                vec![Operation::method("tools/list")],
                None,
            ),
            (
                "forbidden to everyone",
                vec![call("get_user"), Operation::method("tasks/get")],
                None,
            ),
        ];
        for (what, ops, expected) in cases {
            let expected = expected.map(|v| v.into_iter().map(String::from).collect::<Vec<_>>());
            assert_eq!(p.scopes_for(&ops, None), expected, "{what}");
        }
    }

    #[test]
    fn glob_table() {
        let cases = [
            ("*", "", true),
            ("*", "anything/at all", true),
            ("tools/call", "tools/call", true),
            ("tools/call", "tools/calls", false),
            ("tools/*", "tools/call", true),
            ("tools/*", "tool/call", false),
            ("delete_*", "delete_user", true),
            ("delete_*", "undelete_user", false),
            ("*_admin", "db_admin", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("file:///docs/*", "file:///docs/a/b.md", true),
            ("file:///docs/*", "file:///etc/passwd", false),
            ("*a*b*", "xxaxxbxx", true),
            ("*a*b", "xxaxxbxxc", false),
            ("", "", true),
            ("", "x", false),
            // `?` is one character, also where a character is several bytes, on either side.
            ("get_?", "get_é", true),
            ("get_??", "get_é", false),
            ("caf?", "café", true),
            ("café_*", "café_x", true),
            ("café_?", "cafe_x", false),
            ("*é", "aé", true),
            ("?", "🦀", true),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(glob_match(pattern, text), expected, "{pattern} vs {text}");
        }
    }

    #[test]
    fn glob_is_not_exponential() {
        let text = "a".repeat(5_000);
        assert!(!glob_match("*a*a*a*a*a*a*a*a*b", &text));
    }

    const RULES: &str = "
scopeImplies:
  mcp:admin: [mcp:write]
  mcp:write: [mcp:read]
rules:
  - method: tools/call
    name: 'delete_*'
    scopes: [mcp:admin]
  - method: tools/call
    name: 'get_*'
    scopes: [mcp:read]
  - method: tools/call
    name: transfer
    scopes: [mcp:write, payments]
  - method: resources/read
    name: 'file:///public/*'
    scopes: []
  - method: 'resources/*'
    scopes: [mcp:read]
  - method: prompts/get
    scopes: [mcp:read]
";

    #[test]
    fn decisions_table() {
        let p = policy(RULES);
        let read = p.effective_scopes(["mcp:read"]);
        let admin = p.effective_scopes(["mcp:admin"]);
        let write_pay = p.effective_scopes(["mcp:write", "payments"]);
        let none = p.effective_scopes([]);
        let missing = |s: &[&str]| Decision::MissingScopes {
            required: s.iter().map(|x| x.to_string()).collect(),
        };
        let cases = [
            (
                Operation::named("tools/call", "get_user"),
                &read,
                Decision::Allow,
            ),
            (
                Operation::named("tools/call", "get_user"),
                &admin,
                Decision::Allow,
            ),
            (
                Operation::named("tools/call", "get_user"),
                &none,
                missing(&["mcp:read"]),
            ),
            (
                Operation::named("tools/call", "delete_user"),
                &read,
                missing(&["mcp:admin"]),
            ),
            (
                Operation::named("tools/call", "delete_user"),
                &admin,
                Decision::Allow,
            ),
            // All the scopes the operation needs are named, not only the missing one.
            (
                Operation::named("tools/call", "transfer"),
                &admin,
                missing(&["mcp:write", "payments"]),
            ),
            (
                Operation::named("tools/call", "transfer"),
                &write_pay,
                Decision::Allow,
            ),
            (
                Operation::named("tools/call", "unknown_tool"),
                &admin,
                Decision::Forbidden,
            ),
            (
                Operation::named("resources/read", "file:///public/a"),
                &none,
                Decision::Allow,
            ),
            (
                Operation::named("resources/read", "file:///secret"),
                &none,
                missing(&["mcp:read"]),
            ),
            (
                Operation::named("resources/subscribe", "file:///x"),
                &read,
                Decision::Allow,
            ),
            (Operation::named("prompts/get", "p"), &read, Decision::Allow),
            (Operation::method("initialize"), &none, Decision::Allow),
            (
                Operation::method("notifications/initialized"),
                &none,
                Decision::Allow,
            ),
            (Operation::method("tools/list"), &none, Decision::Allow),
            (
                Operation::method("logging/setLevel"),
                &admin,
                Decision::Forbidden,
            ),
            (
                Operation::method("completion/complete"),
                &admin,
                Decision::Forbidden,
            ),
        ];
        for (op, scopes, expected) in cases {
            assert_eq!(
                p.decide(&op, scopes, Caller::Person),
                expected,
                "{op:?} with {scopes:?}"
            );
        }
    }

    #[test]
    fn callers_restrict_a_rule_and_never_pass_the_operation_to_a_later_one() {
        let p = policy(
            "rules:\n\
             - {method: tools/call, name: deploy, scopes: [ci], callers: machines}\n\
             - {method: tools/call, name: 'read_*', scopes: [read], callers: people}\n\
             - {method: tools/call, name: '*', scopes: []}\n",
        );
        let ci = p.effective_scopes(["ci"]);
        let read = p.effective_scopes(["read"]);
        let none = p.effective_scopes([]);
        let deploy = Operation::named("tools/call", "deploy");
        let read_mail = Operation::named("tools/call", "read_mail");
        let other = Operation::named("tools/call", "other");
        use Caller::*;
        let cases = [
            (&deploy, &ci, Machine, Decision::Allow),
            // The catch-all after it would allow anyone: the restriction is not a matcher.
            (
                &deploy,
                &ci,
                Person,
                Decision::CallerNotAdmitted(Callers::Machines),
            ),
            (
                &deploy,
                &ci,
                Unknown,
                Decision::CallerNotAdmitted(Callers::Machines),
            ),
            // Who called is checked before the scopes: no step-up would help a person here.
            (
                &deploy,
                &none,
                Person,
                Decision::CallerNotAdmitted(Callers::Machines),
            ),
            (
                &deploy,
                &none,
                Machine,
                Decision::MissingScopes {
                    required: vec!["ci".into()],
                },
            ),
            (&read_mail, &read, Person, Decision::Allow),
            (
                &read_mail,
                &read,
                Machine,
                Decision::CallerNotAdmitted(Callers::People),
            ),
            (
                &read_mail,
                &read,
                Unknown,
                Decision::CallerNotAdmitted(Callers::People),
            ),
            (&other, &none, Person, Decision::Allow),
            (&other, &none, Machine, Decision::Allow),
            (&other, &none, Unknown, Decision::Allow),
            // Open methods and the default are for anyone.
            (
                &Operation::method("tools/list"),
                &none,
                Machine,
                Decision::Allow,
            ),
            (
                &Operation::method("custom/op"),
                &ci,
                Machine,
                Decision::Forbidden,
            ),
        ];
        for (op, scopes, caller, expected) in cases {
            assert_eq!(
                p.decide(op, scopes, caller),
                expected,
                "{op:?} {scopes:?} {caller:?}"
            );
        }
        // A challenge never asks a person to consent to a machines-only rule's scopes; a people rule's it names.
        assert_eq!(p.scopes_for([&deploy], None), None);
        assert_eq!(
            p.scopes_for([&deploy, &read_mail], None),
            Some(vec!["read".to_owned()])
        );
        // A machine missing the scope is told it, with the rest of its request's.
        assert_eq!(
            p.scopes_for([&deploy, &other], Some(Machine)),
            Some(vec!["ci".to_owned()])
        );
    }

    #[test]
    fn rule_with_name_never_matches_nameless_operation() {
        let p = policy("rules:\n  - method: '*'\n    name: '*'\n    scopes: []\n");
        assert_eq!(
            p.decide(
                &Operation::method("logging/setLevel"),
                &BTreeSet::new(),
                Caller::Person
            ),
            Decision::Forbidden
        );
        assert_eq!(
            p.decide(
                &Operation::named("tools/call", "x"),
                &BTreeSet::new(),
                Caller::Person
            ),
            Decision::Allow
        );
    }

    #[test]
    fn unmatched_policies() {
        let op = Operation::method("logging/setLevel");
        let allow = policy("unmatched: allow\n");
        assert_eq!(
            allow.decide(&op, &BTreeSet::new(), Caller::Person),
            Decision::Allow
        );
        let scoped = policy("unmatched:\n  requireScopes: [mcp:admin]\n");
        assert_eq!(
            scoped.decide(&op, &BTreeSet::new(), Caller::Person),
            Decision::MissingScopes {
                required: vec!["mcp:admin".into()]
            }
        );
        assert_eq!(
            scoped.decide(&op, &scoped.effective_scopes(["mcp:admin"]), Caller::Person),
            Decision::Allow
        );
    }

    #[test]
    fn hierarchy_is_transitive_and_survives_cycles() {
        let p = policy("scopeImplies:\n  a: [b]\n  b: [c]\n  c: [a]\n");
        let eff = p.effective_scopes(["b"]);
        assert_eq!(
            eff,
            BTreeSet::from(["a".to_string(), "b".into(), "c".into()])
        );
        let narrow = policy(RULES).effective_scopes(["mcp:read"]);
        assert_eq!(
            narrow,
            BTreeSet::from(["mcp:read".to_string()]),
            "a narrow scope implies nothing broader"
        );
    }

    #[test]
    fn a_rule_can_close_an_open_method() {
        let p = policy("rules:\n  - method: tools/list\n    scopes: [mcp:read]\n");
        assert_eq!(
            p.decide(
                &Operation::method("tools/list"),
                &BTreeSet::new(),
                Caller::Person
            ),
            Decision::MissingScopes {
                required: vec!["mcp:read".into()]
            }
        );
    }
}
