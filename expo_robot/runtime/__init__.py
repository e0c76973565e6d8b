"""The fine-tune session: policy process (actor), background learner, and the launcher that runs them."""
