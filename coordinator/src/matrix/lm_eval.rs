//! The `api: lm-eval` workload: EleutherAI's lm-evaluation-harness run against the unit's
//! own server. The coordinator writes the harness command from the workload's `lm_eval`
//! settings, so the command is visible in the dry run and stored with the unit; the agent
//! runs it as any harness and parses lm-eval's results JSON into scores
//! (`evalctl_results::score::from_lm_eval`).

use super::model::At;
use super::placeholders::quote_word;

/// lm-eval's program when the workload names none (on the agent's `PATH`).
pub(crate) const DEFAULT_PROGRAM: &str = "lm_eval";
/// Requests lm-eval keeps in flight when the workload gives no `concurrency`.
pub(crate) const DEFAULT_CONCURRENCY: u32 = 8;
/// Retries of a failed request inside lm-eval.
const MAX_RETRIES: u32 = 3;
/// The `tokenizer` value that asks the server to tokenize (vLLM's `/tokenize`).
pub(crate) const REMOTE_TOKENIZER: &str = "remote";

/// Which OpenAI-compatible endpoint lm-eval talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `/v1/completions` (`local-completions`): every task type; loglikelihood tasks need a
    /// `tokenizer`.
    Completions,
    /// `/v1/chat/completions` (`local-chat-completions` with the server's chat template):
    /// generate-until tasks only.
    Chat,
}

/// A workload's `lm_eval` mapping (paths as written; the validator expands them).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LmEvalEntry {
    /// `tasks`: lm-eval task or group names.
    pub tasks: Vec<String>,
    /// `endpoint`.
    pub endpoint: Endpoint,
    /// `include_path`: a directory of the user's own task YAML files.
    pub include_path: Option<At<String>>,
    /// `tokenizer`: a local tokenizer directory, or `remote`.
    pub tokenizer: Option<At<String>>,
    /// `limit`: documents per task.
    pub limit: Option<u64>,
    /// `num_fewshot`.
    pub num_fewshot: Option<u64>,
    /// `concurrency`: requests in flight.
    pub concurrency: u32,
    /// `gen_kwargs`: lm-eval's `--gen_kwargs` text.
    pub gen_kwargs: Option<String>,
    /// `args`: more lm-eval arguments, appended (a template: harness placeholders allowed).
    pub args: Option<At<String>>,
    /// `program`: the lm-eval executable.
    pub program: Option<At<String>>,
}

/// The settings' paths after expansion.
#[derive(Debug, Clone, Default)]
pub(crate) struct ExpandedPaths {
    /// `program`, or [`DEFAULT_PROGRAM`].
    pub program: String,
    /// `include_path`.
    pub include_path: Option<String>,
    /// `tokenizer` (`remote` is kept as it is).
    pub tokenizer: Option<String>,
}

impl LmEvalEntry {
    /// The harness command template: lm-eval offline (`HF_HUB_OFFLINE=1`,
    /// `HF_DATASETS_OFFLINE=1`: nothing is fetched from a hub at run time), pointed at
    /// `{url}` with the model name the server serves, writing its results under `{out}`.
    /// Literal values are quoted for the template's word splitting and their braces escaped.
    pub fn command(&self, paths: &ExpandedPaths, seed: u64) -> String {
        let (model, route) = match self.endpoint {
            Endpoint::Completions => ("local-completions", "/v1/completions"),
            Endpoint::Chat => ("local-chat-completions", "/v1/chat/completions"),
        };
        let mut model_args = vec![
            "model={model.served}".to_owned(),
            format!("base_url={{url}}{route}"),
            format!("num_concurrent={}", self.concurrency),
            format!("max_retries={MAX_RETRIES}"),
        ];
        match paths.tokenizer.as_deref() {
            None => model_args.extend([
                "tokenized_requests=False".to_owned(),
                "tokenizer_backend=none".to_owned(),
            ]),
            Some(REMOTE_TOKENIZER) => model_args.push("tokenizer_backend=remote".to_owned()),
            Some(path) => model_args.extend([
                "tokenizer_backend=huggingface".to_owned(),
                format!("tokenizer={}", quote_word(path)),
            ]),
        }
        let mut words = vec![
            "env".to_owned(),
            "HF_HUB_OFFLINE=1".to_owned(),
            "HF_DATASETS_OFFLINE=1".to_owned(),
            quote_word(&paths.program),
            "--model".to_owned(),
            model.to_owned(),
            "--model_args".to_owned(),
            model_args.join(","),
            "--tasks".to_owned(),
            quote_word(&self.tasks.join(",")),
        ];
        if let Some(path) = &paths.include_path {
            words.extend(["--include_path".to_owned(), quote_word(path)]);
        }
        if let Some(limit) = self.limit {
            words.extend(["--limit".to_owned(), limit.to_string()]);
        }
        if let Some(shots) = self.num_fewshot {
            words.extend(["--num_fewshot".to_owned(), shots.to_string()]);
        }
        if self.endpoint == Endpoint::Chat {
            words.push("--apply_chat_template".to_owned());
        }
        if let Some(gen_kwargs) = &self.gen_kwargs {
            words.extend(["--gen_kwargs".to_owned(), quote_word(gen_kwargs)]);
        }
        words.extend([
            "--seed".to_owned(),
            seed.to_string(),
            "--output_path".to_owned(),
            "{out}".to_owned(),
        ]);
        if let Some(args) = &self.args {
            words.push(args.value.clone());
        }
        words.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(endpoint: Endpoint) -> LmEvalEntry {
        LmEvalEntry {
            tasks: vec!["gsm8k".into(), "evalctl_arith".into()],
            endpoint,
            include_path: None,
            tokenizer: None,
            limit: Some(50),
            num_fewshot: Some(5),
            concurrency: 4,
            gen_kwargs: None,
            args: None,
            program: None,
        }
    }

    #[test]
    fn a_chat_run_renders_lm_evals_own_flags() {
        let paths = ExpandedPaths {
            program: DEFAULT_PROGRAM.into(),
            include_path: Some("/srv/my tasks".into()),
            tokenizer: None,
        };
        assert_eq!(
            entry(Endpoint::Chat).command(&paths, 7),
            "env HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 lm_eval --model local-chat-completions \
             --model_args model={model.served},base_url={url}/v1/chat/completions,num_concurrent=4,\
             max_retries=3,tokenized_requests=False,tokenizer_backend=none \
             --tasks gsm8k,evalctl_arith --include_path '/srv/my tasks' --limit 50 \
             --num_fewshot 5 --apply_chat_template --seed 7 --output_path {out}"
        );
    }

    #[test]
    fn a_tokenizer_selects_lm_evals_tokenizer_backend() {
        let mut paths = ExpandedPaths {
            program: "/opt/lm-eval/bin/lm_eval".into(),
            include_path: None,
            tokenizer: Some("/models/{odd}".into()),
        };
        let command = entry(Endpoint::Completions).command(&paths, 0);
        assert!(command.contains(
            "--model local-completions --model_args model={model.served},base_url={url}/v1/completions,"
        ));
        assert!(command.contains("tokenizer_backend=huggingface,tokenizer=/models/{{odd}}"));
        assert!(!command.contains("--apply_chat_template"));
        paths.tokenizer = Some(REMOTE_TOKENIZER.into());
        let command = entry(Endpoint::Completions).command(&paths, 0);
        assert!(command.contains(",tokenizer_backend=remote "), "{command}");
        assert!(!command.contains("tokenized_requests=False"));
    }
}
