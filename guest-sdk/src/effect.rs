//! The description a command handler returns (Akka's `Effect`).

use std::any::Any;
use std::fmt;
use std::rc::Rc;

use crate::{Reply, SideEffect};

/// A reply computed from the state after the command's events
/// ([`Effect::then_reply_with`]). The state's type is checked when it is called.
#[derive(Clone)]
pub(crate) struct ReplyWith(Rc<ReplyFn>);

/// Takes the state after the events (type-checked when called).
type ReplyFn = dyn Fn(&dyn Any) -> Reply;

impl ReplyWith {
    fn new<S: 'static>(reply: impl Fn(&S) -> Reply + 'static) -> Self {
        ReplyWith(Rc::new(move |state: &dyn Any| match state.downcast_ref::<S>() {
            Some(state) => reply(state),
            None => panic!(
                "then_reply_with: the closure takes a `{}`, which is not the entity's State",
                std::any::type_name::<S>()
            ),
        }))
    }

    pub(crate) fn call(&self, state_after: &dyn Any) -> Reply {
        (self.0)(state_after)
    }
}

impl fmt::Debug for ReplyWith {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReplyWith(<computed from the state after the events>)")
    }
}

impl PartialEq for ReplyWith {
    fn eq(&self, other: &Self) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }
}

/// What to do with a command. Exactly one per command, as in Akka: it is not
/// possible to both persist and be unhandled.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action<E> {
    Persist(Vec<E>),
    None,
    Unhandled,
    Stash,
}

/// The outcome of a command handler: an action (persist / none / unhandled /
/// stash) plus what follows it (reply, side effects, unstash, stop).
///
/// Handlers are pure, so an `Effect` is only a description; the host carries it
/// out, and releases the reply and the side effects only after the persisted
/// events are durable. Start with a constructor and chain:
///
/// ```
/// # use mneme_sdk::{Effect, Reply, SideEffect};
/// let effect: Effect<&str> = Effect::persist("Deposited")
///     .then_reply(Reply::ack())
///     .then_run(SideEffect::info("deposited"));
/// assert_eq!(effect.events(), &["Deposited"]);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use = "an Effect does nothing unless it is returned from `handle`"]
pub struct Effect<E> {
    pub(crate) action: Action<E>,
    pub(crate) reply: Option<Reply>,
    pub(crate) reply_with: Option<ReplyWith>,
    pub(crate) then: Vec<SideEffect>,
    pub(crate) unstash_all: bool,
    pub(crate) stop: bool,
}

impl<E> Effect<E> {
    fn with_action(action: Action<E>) -> Self {
        Effect { action, reply: None, reply_with: None, then: Vec::new(), unstash_all: false, stop: false }
    }

    /// Persist one event, then apply it to the state.
    pub fn persist(event: E) -> Self {
        Self::with_action(Action::Persist(vec![event]))
    }

    /// Persist several events atomically (all or none). An empty list is the same
    /// as [`Effect::none`].
    pub fn persist_all(events: Vec<E>) -> Self {
        if events.is_empty() {
            Self::none()
        } else {
            Self::with_action(Action::Persist(events))
        }
    }

    /// Persist nothing, e.g. for a query or a command that changes nothing.
    pub fn none() -> Self {
        Self::with_action(Action::None)
    }

    /// The command is not handled in the current state. The host reports this to
    /// the caller and counts it.
    pub fn unhandled() -> Self {
        Self::with_action(Action::Unhandled)
    }

    /// Keep the command; the host hands it in again after a later effect with
    /// [`Effect::then_unstash_all`]. Its reply is the one given when it is finally
    /// handled.
    pub fn stash() -> Self {
        Self::with_action(Action::Stash)
    }

    /// Persist nothing and reply (Akka's `Effect.reply`).
    pub fn reply(reply: Reply) -> Self {
        Self::none().then_reply(reply)
    }

    /// Reply to the caller once the events are durable (replaces an earlier reply).
    pub fn then_reply(mut self, reply: Reply) -> Self {
        self.reply = Some(reply);
        self.reply_with = None;
        self
    }

    /// Reply to the caller once the events are durable, with a reply computed from
    /// the state *after* the events (Akka's `thenReply(replyTo)(newState => ...)`),
    /// so the handler need not repeat its event handler to know the new state.
    /// Replaces an earlier reply. `S` must be the entity's `State`.
    ///
    /// ```
    /// # use mneme_sdk::{Effect, Reply};
    /// #[derive(Default)]
    /// struct Counter { total: u64 }
    /// let effect: Effect<u64> = Effect::persist(5).then_reply_with(|c: &Counter| Reply::ok(&c.total));
    /// assert_eq!(effect.reply_value(), None, "not known before the events are applied");
    /// assert_eq!(effect.reply_after(&Counter { total: 5 }), Some(Reply::ok(&5)));
    /// ```
    pub fn then_reply_with<S: 'static>(mut self, reply: impl Fn(&S) -> Reply + 'static) -> Self {
        self.reply = None;
        self.reply_with = Some(ReplyWith::new(reply));
        self
    }

    /// Run a side effect once the events are durable. Side effects run in the order
    /// they were added.
    pub fn then_run(mut self, side_effect: SideEffect) -> Self {
        self.then.push(side_effect);
        self
    }

    /// After this command, hand every stashed command in again, in arrival order.
    pub fn then_unstash_all(mut self) -> Self {
        self.unstash_all = true;
        self
    }

    /// After this command's effects, passivate the entity.
    pub fn then_stop(mut self) -> Self {
        self.stop = true;
        self
    }

    /// The events to persist (empty unless this is a persist effect).
    pub fn events(&self) -> &[E] {
        match &self.action {
            Action::Persist(events) => events,
            _ => &[],
        }
    }

    /// The reply given with [`Effect::then_reply`] or [`Effect::reply`], if any.
    /// `None` too for a reply computed from the new state: see [`Effect::reply_after`].
    pub fn reply_value(&self) -> Option<&Reply> {
        self.reply.as_ref()
    }

    /// The reply the caller gets when the state after this effect's events is
    /// `state_after`: the fixed reply, or the one [`Effect::then_reply_with`]
    /// computes from that state.
    ///
    /// # Panics
    /// If `S` is not the type the closure of `then_reply_with` takes.
    pub fn reply_after<S: 'static>(&self, state_after: &S) -> Option<Reply> {
        match &self.reply_with {
            Some(reply) => Some(reply.call(state_after)),
            None => self.reply.clone(),
        }
    }

    /// The side effects, in order.
    pub fn side_effects(&self) -> &[SideEffect] {
        &self.then
    }

    /// True for [`Effect::persist`] / [`Effect::persist_all`] with events.
    pub fn is_persist(&self) -> bool {
        matches!(self.action, Action::Persist(_))
    }

    /// True for [`Effect::unhandled`].
    pub fn is_unhandled(&self) -> bool {
        matches!(self.action, Action::Unhandled)
    }

    /// True for [`Effect::stash`].
    pub fn is_stashed(&self) -> bool {
        matches!(self.action, Action::Stash)
    }

    /// True when nothing is persisted, stashed or unhandled ([`Effect::none`],
    /// [`Effect::reply`]).
    pub fn is_none(&self) -> bool {
        matches!(self.action, Action::None)
    }

    /// True if [`Effect::then_unstash_all`] was chained.
    pub fn unstashes_all(&self) -> bool {
        self.unstash_all
    }

    /// True if [`Effect::then_stop`] was chained.
    pub fn stops(&self) -> bool {
        self.stop
    }
}
