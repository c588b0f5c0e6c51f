//! Questions between the admin sides of hubs, over NATS request and reply: a push or a kick from
//! one hub's admin API for users of another. Control traffic, off the relay's path.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::backplane::{Ask, Backplane};
use crate::state::HubState;

/// Questions answered at once, at most: more wait in NATS's queue.
const MAX_ANSWERING: usize = 64;

/// Questions waiting to be sent, at most: more are refused at once.
pub(super) const MAX_WAITING: usize = 256;

/// The longest a question waits for its answer: a push waits for its acknowledgement over there.
pub(crate) const ASK_TIMEOUT: Duration = Duration::from_secs(15);

/// Sends this hub's questions to other hubs, each answered on its own.
pub(super) async fn ask(
    client: async_nats::Client,
    core: Arc<Backplane>,
    mut asks: mpsc::Receiver<Ask>,
    shutdown: CancellationToken,
) {
    loop {
        let ask = tokio::select! {
            _ = shutdown.cancelled() => return,
            ask = asks.recv() => ask,
        };
        let Some((hub, question, answer)) = ask else { return };
        let client = client.clone();
        let subject = core.names.admin(hub);
        tokio::spawn(async move {
            let request = async_nats::Request::new().payload(question).timeout(Some(ASK_TIMEOUT));
            let got = client.send_request(subject, request).await;
            let _asker_gone = answer.send(match got {
                Ok(message) => Ok(message.payload),
                Err(err) => Err(format!("hub {hub} did not answer: {err}")),
            });
        });
    }
}

/// Answers other hubs' questions to this hub's admin side.
pub(super) async fn answer(
    client: async_nats::Client,
    shared: Arc<HubState>,
    core: Arc<Backplane>,
    shutdown: CancellationToken,
) {
    let mut questions = match client.subscribe(core.names.admin(core.me)).await {
        Ok(questions) => questions,
        Err(err) => {
            warn!(error = %err, "cannot subscribe to this hub's admin subject");
            return;
        }
    };
    let answering = Arc::new(Semaphore::new(MAX_ANSWERING));
    loop {
        let question = tokio::select! {
            _ = shutdown.cancelled() => return,
            question = questions.next() => question,
        };
        let Some(question) = question else { return };
        let Some(reply) = question.reply else {
            warn!("a question on the admin subject with no reply subject; ignored");
            continue;
        };
        let Ok(permit) = answering.clone().acquire_owned().await else { return };
        let (client, shared) = (client.clone(), shared.clone());
        tokio::spawn(async move {
            let answer = crate::hub_requests::answer_hub(&shared, question.payload).await;
            if let Err(err) = client.publish(reply, answer).await {
                warn!(error = %err, "answer to another hub not sent");
            }
            drop(permit);
        });
    }
}
