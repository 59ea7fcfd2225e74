-- Delivery queue heads (issue 19's drain benchmark). The sender claims only deliveries that
-- are the lowest pending sequence of their (destination, onboarding); finding them by
-- checking every due row made each claim O(backlog) after an outage, because the blocked
-- rows behind a failing head are the oldest due ones. `head` marks the rows that may be a
-- queue's lowest pending one: set at fan-out when no lower one is pending, moved to the next
-- pending row when a head is delivered or dead-lettered, TRUE for replayed rows. It is a
-- hint: the claim still checks the order rule, so a stale TRUE only costs a skipped row.
ALTER TABLE deliveries ADD COLUMN head BOOLEAN NOT NULL DEFAULT TRUE;
UPDATE deliveries SET head = FALSE WHERE state = 'PENDING' AND EXISTS (SELECT 1 FROM deliveries p
    WHERE p.destination_id = deliveries.destination_id AND p.onboarding_id = deliveries.onboarding_id
    AND p.sequence < deliveries.sequence AND p.state = 'PENDING');
-- The claim's scan: due heads in claim order, nothing else.
CREATE INDEX deliveries_heads ON deliveries (next_attempt_ms, onboarding_id, sequence)
    WHERE state = 'PENDING' AND head;
-- The order rule's probe (a lower pending sequence of the same queue) and the head moves.
CREATE INDEX deliveries_pending ON deliveries (destination_id, onboarding_id, sequence)
    WHERE state = 'PENDING';
