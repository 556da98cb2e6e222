use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// The channels a push connector serves, by id. A reload swaps the whole
/// table at once; a request already running keeps the channel it started
/// with (it holds an `Arc`), so nothing in flight is cut.
pub struct LiveChannels<T> {
    table: Arc<RwLock<Table<T>>>,
}

type Table<T> = Arc<HashMap<String, Arc<T>>>;

impl<T> Clone for LiveChannels<T> {
    fn clone(&self) -> Self {
        LiveChannels {
            table: self.table.clone(),
        }
    }
}

impl<T> Default for LiveChannels<T> {
    fn default() -> Self {
        LiveChannels {
            table: Arc::new(RwLock::new(Arc::new(HashMap::new()))),
        }
    }
}

impl<T> LiveChannels<T> {
    pub fn replace(&self, channels: impl IntoIterator<Item = (String, T)>) {
        let map = channels
            .into_iter()
            .map(|(id, c)| (id, Arc::new(c)))
            .collect();
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
    }

    pub fn get(&self, id: &str) -> Option<Arc<T>> {
        self.table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }
}
