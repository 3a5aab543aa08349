"""The notifier: daily digest and stalled-deal reminders, through an outbox, to every channel."""
