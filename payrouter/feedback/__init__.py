"""Payer feedback on completions: what is kept per served call, and who may rate it.

At serve time each answered call leaves a `CallRecord` in the store (off the paid path, for
the service config's ``feedback_ttl``): its payer, model, split rule and arm, and the prompt's *features* (the
hashed indices the learned router reads, and its format class), never the prompt's text.
``POST /v1/feedback`` accepts a rating only with an EIP-191 signature by that payer over
`feedback_message`; the rating goes to the request log, which ``payrouter router train
--feedback`` folds into the router.
"""

from payrouter.feedback.auth import RATINGS, feedback_digest, feedback_message, feedback_signer, sign_feedback
from payrouter.feedback.record import FEEDBACK_TTL, CallRecord, FeedbackRecorder, call_key, rated_key

__all__ = [
    "FEEDBACK_TTL",
    "RATINGS",
    "CallRecord",
    "FeedbackRecorder",
    "call_key",
    "feedback_digest",
    "feedback_message",
    "feedback_signer",
    "rated_key",
    "sign_feedback",
]
