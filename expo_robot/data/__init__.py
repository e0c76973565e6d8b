"""Data: scripted operators, LeRobotDataset writing/reading, seed data, replay buffers and chunking."""
