//! Scored answers to the arithmetic task shipped in `datasets/lm-eval/evalctl_arith`, so that
//! an accuracy harness run against the simulator measures a known accuracy.
//!
//! The task asks `Question N: What is A plus B?`. A server started with an accuracy `r`
//! answers question `N` correctly exactly when `floor((N + 1) · r) > floor(N · r)`: of any
//! questions `0..n` it answers `floor(n · r)` correctly, spread evenly, so a harness that
//! runs the first `n` questions measures `r` to within `1 / n` rather than within sampling
//! noise. A wrong answer is the sum plus one. Prompts that hold no such question (every
//! benchmark prompt) are not answered this way.

/// One question of the task, as read from the end of a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Question {
    number: u64,
    a: i64,
    b: i64,
}

/// The answer to the last question of `prompt` at `accuracy`, or `None` when the prompt asks
/// none. Few-shot prompts hold answered examples before it; only the last question counts.
pub(crate) fn answer(prompt: &str, accuracy: f64) -> Option<String> {
    let question = last_question(prompt)?;
    let right = question.a + question.b;
    let n = question.number as f64;
    let correct = ((n + 1.0) * accuracy).floor() > (n * accuracy).floor();
    Some(if correct { right } else { right + 1 }.to_string())
}

fn last_question(prompt: &str) -> Option<Question> {
    let start = prompt.rfind("Question ")?;
    let rest = &prompt[start + "Question ".len()..];
    let (number, rest) = rest.split_once(": What is ")?;
    let (a, rest) = rest.split_once(" plus ")?;
    let (b, _) = rest.split_once('?')?;
    Some(Question {
        number: number.trim().parse().ok()?,
        a: a.trim().parse().ok()?,
        b: b.trim().parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(number: u64, a: i64, b: i64) -> String {
        format!("Question {number}: What is {a} plus {b}?\nAnswer:")
    }

    #[test]
    fn of_the_first_n_questions_floor_n_times_the_accuracy_are_right() {
        for (accuracy, n, expected) in [(0.8, 50, 40), (0.5, 50, 25), (0.8, 7, 5), (1.0, 9, 9)] {
            let right = (0..n)
                .filter(|&i| answer(&prompt(i, 12, 30), accuracy).as_deref() == Some("42"))
                .count();
            assert_eq!(right, expected, "accuracy {accuracy}, {n} questions");
        }
        assert_eq!(answer(&prompt(3, 12, 30), 0.0).as_deref(), Some("43"));
    }

    #[test]
    fn only_the_last_question_of_a_few_shot_prompt_is_answered() {
        let few_shot = format!("{} 5\n\n{}", prompt(1, 2, 3), prompt(2, 40, 2));
        assert_eq!(answer(&few_shot, 1.0).as_deref(), Some("42"));
        assert_eq!(answer("Tell me a story", 1.0), None);
        assert_eq!(answer("Question x: What is 1 plus 2?", 1.0), None);
    }
}
