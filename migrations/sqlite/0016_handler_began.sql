-- Set to 1 once the node running an execution has recorded that its handler began. A
-- running row whose lease expires with 0 here never reached guest code (its node died
-- between the claim and the start), so the reconciler puts it back in the queue instead
-- of failing it. Nodes write the marks in batches, about every half second, never on the
-- path to the handler.
ALTER TABLE executions ADD COLUMN handler_began INTEGER NOT NULL DEFAULT 0
    CHECK (handler_began = 0 OR handler_began = 1);
