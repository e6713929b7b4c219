//! Named points where the mover can be held, so a test can stop the admin
//! at an exact step of a relocation (between the end of a move and its
//! sweep, say) instead of hoping a kill lands there. Nothing is held unless
//! a test arms a point; an unarmed point costs one uncontended lock.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// The next task to reach the point waits there.
    Armed,
    /// A task is waiting at the point until it is released.
    Reached,
}

pub struct Holds(watch::Sender<BTreeMap<String, Hold>>);

impl Default for Holds {
    fn default() -> Self {
        Self(watch::Sender::new(BTreeMap::new()))
    }
}

impl Holds {
    /// The next task to reach `name` waits there until [`Holds::release`].
    pub fn arm(&self, name: &str) {
        self.0.send_modify(|m| {
            m.insert(name.to_string(), Hold::Armed);
        });
    }

    /// Lets a task waiting at `name` go on (and disarms it).
    pub fn release(&self, name: &str) {
        self.0.send_modify(|m| {
            m.remove(name);
        });
    }

    /// Waits (at most 60 s, then panics: this is for tests) until a task
    /// waits at `name`.
    pub async fn reached(&self, name: &str) {
        let mut rx = self.0.subscribe();
        let waiting = async {
            rx.wait_for(|m| m.get(name) == Some(&Hold::Reached))
                .await
                .is_ok()
        };
        let reached = tokio::time::timeout(Duration::from_secs(60), waiting).await;
        assert!(
            matches!(reached, Ok(true)),
            "nothing reached hold point {name} within 60 s"
        );
    }

    /// Called by the mover at point `name`: waits there while it is armed.
    pub(crate) async fn point(&self, name: &str) {
        let mut held = false;
        self.0.send_if_modified(|m| match m.get_mut(name) {
            Some(h @ Hold::Armed) => {
                *h = Hold::Reached;
                held = true;
                true
            }
            _ => false,
        });
        if held {
            tracing::info!(point = name, "held at a test hold point");
            let mut rx = self.0.subscribe();
            let _ = rx.wait_for(|m| !m.contains_key(name)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_armed_point_holds_until_released() {
        let holds = std::sync::Arc::new(Holds::default());
        holds.point("free").await; // not armed: passes
        holds.arm("p");
        let h = holds.clone();
        let task = tokio::spawn(async move { h.point("p").await });
        holds.reached("p").await;
        assert!(!task.is_finished());
        holds.release("p");
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("released")
            .unwrap();
        holds.point("p").await; // released points pass
    }
}
