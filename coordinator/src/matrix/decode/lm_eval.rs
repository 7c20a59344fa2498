//! A workload's `lm_eval` mapping (`api: lm-eval`, docs/accuracy.md).

use super::{Decoder, Node, Value};
use crate::matrix::error::MatrixError;
use crate::matrix::lm_eval::{DEFAULT_CONCURRENCY, Endpoint, LmEvalEntry};

const LM_EVAL_KEYS: &[&str] = &[
    "tasks",
    "endpoint",
    "include_path",
    "tokenizer",
    "limit",
    "num_fewshot",
    "concurrency",
    "gen_kwargs",
    "args",
    "program",
];
const ENDPOINTS: &[(Endpoint, &str)] = &[
    (Endpoint::Completions, "completions"),
    (Endpoint::Chat, "chat"),
];

impl Decoder<'_> {
    /// The `lm_eval` mapping of an `api: lm-eval` workload.
    pub(super) fn lm_eval(&self, path: &str, node: &Node) -> Result<LmEvalEntry, MatrixError> {
        let f = self.fields(node, path, LM_EVAL_KEYS)?;
        let tasks_node = f.req("tasks")?;
        let tasks = match &tasks_node.value {
            Value::Seq(items) if !items.is_empty() => items
                .iter()
                .enumerate()
                .map(|(i, n)| self.task_name(&format!("{}[{i}]", f.field("tasks")), n))
                .collect::<Result<Vec<_>, _>>()?,
            Value::Str(_) => vec![self.task_name(&f.field("tasks"), tasks_node)?],
            _ => {
                return Err(self.type_error(
                    &f.field("tasks"),
                    tasks_node,
                    "a non-empty list of lm-eval task names",
                ));
            }
        };
        let endpoint = f
            .get("endpoint")
            .map(|n| self.choice(&f.field("endpoint"), n, ENDPOINTS))
            .transpose()?
            .unwrap_or(Endpoint::Completions);
        let tokenizer = f
            .get("tokenizer")
            .map(|n| self.nonempty_string(&f.field("tokenizer"), n))
            .transpose()?;
        if let (Endpoint::Chat, Some(_)) = (endpoint, &tokenizer) {
            return Err(self.errors.hinted(
                f.key_pos("tokenizer").unwrap_or(node.pos),
                format!(
                    "`{}` is only used with `endpoint: completions`: chat requests run only generate-until tasks, which need no tokenizer",
                    f.field("tokenizer")
                ),
                Some("remove `tokenizer`, or use `endpoint: completions` for loglikelihood tasks"),
            ));
        }
        let text = |key: &str| {
            f.get(key)
                .map(|n| self.nonempty_string(&f.field(key), n))
                .transpose()
        };
        Ok(LmEvalEntry {
            tasks,
            endpoint,
            include_path: text("include_path")?,
            tokenizer,
            limit: f
                .get("limit")
                .map(|n| self.uint64(&f.field("limit"), n, 1))
                .transpose()?,
            num_fewshot: f
                .get("num_fewshot")
                .map(|n| self.uint64(&f.field("num_fewshot"), n, 0))
                .transpose()?,
            concurrency: f
                .get("concurrency")
                .map(|n| self.uint32(&f.field("concurrency"), n, 1))
                .transpose()?
                .unwrap_or(DEFAULT_CONCURRENCY),
            gen_kwargs: text("gen_kwargs")?.map(|t| t.value),
            args: text("args")?,
            program: text("program")?,
        })
    }

    /// A task name: what lm-eval accepts in `--tasks` (no commas or whitespace, which
    /// would split it).
    fn task_name(&self, path: &str, node: &Node) -> Result<String, MatrixError> {
        let name = self.nonempty_string(path, node)?;
        if name.value.contains(|c: char| c == ',' || c.is_whitespace()) {
            return Err(self.errors.hinted(
                node.pos,
                format!(
                    "`{path}`: `{}` is not one task name (no commas or spaces)",
                    name.value
                ),
                Some("list tasks separately: `tasks: [gsm8k, hellaswag]`"),
            ));
        }
        Ok(name.value)
    }
}
