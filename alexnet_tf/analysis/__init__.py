"""What a trained network shows, as the paper's section 6.1 shows it: Figure 3 (conv1's filters), Figure 4
(predictions and fc7 nearest neighbours), and the measures that turn what a person sees into numbers."""
